import json

from genie_env.checkpoint import load_checkpoint, load_model
from genie_env.cli import main
from genie_env.data.probes import load_key_probes
from genie_env.video import read_video


def test_info_prints_real_parameter_counts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "56,521,168" in out and "68,436,512" in out and "143,444,992" in out
    assert "268,402,672" in out


def test_pipeline_runs_end_to_end_and_skips_finished_stages(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    argv = ["pipeline", "--preset", "tiny", "--data_dir", str(data), "--out_dir", str(out), "--episodes", "6",
            "--max_episode_steps", "30", "--max_steps", "3", "--device", "cpu", "--key_probes", "3"]
    assert main(argv) == 0
    assert len(list(data.glob("*.h5"))) == 1
    for kind in ("tokenizer", "lam", "dynamics"):
        assert load_checkpoint(out / kind / "latest.pt")["step"] == 3
        load_model(out / kind / "latest.pt", kind)
    results = json.loads((out / "results.json").read_text())
    assert 0 < results["tokenizer PSNR (dB)"] < 60 and 0 < results["tokenizer SSIM"] <= 1
    assert "delta-t PSNR at t=4 (dB)" in results and len(results["rollout PSNR by t, inferred actions (dB)"]) == 7
    assert 0 <= results["LAM vs true actions: accuracy"] <= 1
    # The arrow keys, mapped from CoinRun's true actions, against the real game on 3 key probes.
    amap = json.loads((out / "action_map.json").read_text())
    assert results["arrow keys on key probes: trials"] == 3 * 2 * 2
    assert results["arrow keys on key probes: the real game's right scrolls right (fraction)"] == (
        load_key_probes(out / "key_probes.h5")["scroll"][:, 0] > 0).mean()
    assert 0 <= amap["right"] < 4 and amap["left"] != amap["right"]
    video = read_video(results["video"])
    assert video.shape[0] == 8 and video.shape[2] == 3 * video.shape[1]  # truth | inferred | random
    printed = capsys.readouterr().out
    assert "delta-t PSNR at t=4" in printed
    mtime = (out / "tokenizer" / "latest.pt").stat().st_mtime
    assert main(argv) == 0  # a second run finds every stage done
    assert (out / "tokenizer" / "latest.pt").stat().st_mtime == mtime


def test_progress_prints_a_line_every_few_seconds_off_a_terminal(capsys):
    import io
    import time

    from genie_env.progress import progress
    out = io.StringIO()
    bar = progress(total=3000, desc="train", interval=0.05, stream=out)
    for i in range(3000):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}", refresh=False)  # as the trainers do
    time.sleep(0.06)
    bar.update(0)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert 1 <= len(lines) < 100  # not one redraw per update
    assert all(line.startswith("train:") for line in lines) and "3000/3000" in lines[-1]
