"""The benchmark scripts run (tiny settings): BENCHMARKS.md's commands must not rot."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_env_step_benchmark_prints_its_tables():
    out = run("benchmarks/env_step.py", "--context", "3", "--sizes", "1,2", "--repeats", "1", "--warm_steps", "1")
    assert "window widened" not in out  # the bundled window already holds 3 + 1 frames
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    # context 1..3, then N = 1, 2 batched worlds, then N = 1, 2 through gym.make_vec
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2", "| 3", "| 1", "| 2", "| 1", "| 2"]
    assert all(float(r.split(" | ")[1]) > 0 for r in rows)
    assert "matmul (2048x2048) on this machine" in out and "gym.make_vec" in out


def test_train_step_benchmark_measures_each_tiny_stage():
    out = run("benchmarks/train_step.py", "--preset", "tiny", "--steps", "1", "--batch_size", "2")
    for kind in ("tokenizer", "lam", "dynamics"):
        row = next(line for line in out.splitlines() if f"configs/tiny/{kind}_config.yaml" in line)
        assert "error" not in row and float(row.split(" | ")[3]) > 0  # step seconds
    one = run("benchmarks/train_step.py", "--configs", "configs/tiny/dynamics_config.yaml", "--steps", "1",
              "--batch_size", "2")
    rows = [line for line in one.splitlines() if line.startswith("| configs/")]
    assert len(rows) == 1 and rows[0].startswith("| configs/tiny/dynamics_config.yaml |") and "error" not in rows[0]


def test_env_step_benchmark_builds_the_seed_size_models():
    out = run("benchmarks/env_step.py", "--preset", "seed", "--maskgit_steps", "1", "--context", "1",
              "--sizes", "1", "--warm_steps", "0", "--repeats", "1")
    assert "seed model (143.4M-parameter dynamics)" in out
    flops_per_frame = float(next(line for line in out.splitlines() if line.startswith("| 1 |") and "%" in line)
                            .split(" | ")[4])
    assert 150 < flops_per_frame < 200  # 1 MaskGIT pass + observing the frame + decoding it, in GFLOP


def test_trainers_benchmark_runs_the_three_trainers(coinrun_dir):
    out = run("benchmarks/trainer_throughput.py", "--steps", "3", "--batch_size", "2", "--data_dir", str(coinrun_dir),
              "--grad_checkpointing")
    for kind in ("tokenizer", "lam", "dynamics"):
        cells = next(line for line in out.splitlines() if line.startswith(f"| train_{kind} |")).split(" | ")
        assert cells[1] == "3" and cells[2] == "2 x 8" and float(cells[3]) > 0 and float(cells[4]) > 0


def test_lam_context_ab_reports_both_arms(coinrun_dir):
    for context, batch in (("8", "2"), ("2", "6")):
        out = run("benchmarks/lam_context.py", "--context", context, "--batch_size", batch, "--steps", "2",
                  "--every", "1", "--data_dir", str(coinrun_dir), "--heldout", str(coinrun_dir))
        lines = [line for line in out.splitlines() if line.startswith(f"context {context} step ")]
        assert len(lines) == 2 and "MI " in lines[-1] and "code shares" in lines[-1]


def test_motion_benchmark_measures_the_data_and_a_lam(coinrun_dir, tmp_path):
    import torch
    from genie_env.checkpoint import save_checkpoint
    from genie_env.config import StageConfig
    from genie_env.models import LatentActionModel, VideoTokenizer
    from tests.tiny import lam_cfg, tokenizer_cfg
    torch.manual_seed(0)
    lam = LatentActionModel(lam_cfg(image_size=(64, 64), patch_size=16, max_frames=2))
    save_checkpoint(tmp_path / "lam.pt", lam, StageConfig("lam", lam.cfg))
    tok = VideoTokenizer(tokenizer_cfg(image_size=(64, 64), patch_size=8, max_frames=2))
    save_checkpoint(tmp_path / "tok.pt", tok, StageConfig("tokenizer", tok.cfg))
    out = run("benchmarks/motion.py", "--data_dir", str(coinrun_dir), "--lam", str(tmp_path / "lam.pt"),
              "--tokenizers", str(tmp_path / "tok.pt"), "--strides", "1", "3", "--pairs", "40",
              "--max_shift", "3", "--eval_clips", "10", "--eval_clip_len", "5").splitlines()
    assert [line.split(":")[0] for line in out if line.startswith("stride")] == ["stride 1", "stride 3"]
    # eval's LAM sample, read once: 10 clips of 5 frames, 4 transitions each.
    sample = [line for line in out if line.startswith("eval's LAM sample")]
    assert len(sample) == 1 and "10 clips of 5 frames (40 transitions)" in sample[0] and "corrected" in sample[0]
    for line in out:
        if "moved left/still/right" in line:
            for part in line.split(";"):
                assert abs(sum(float(x) for x in part.split()[-5::2]) - 1) < 0.02  # each axis's shares
    assert sum("LAM: next-frame PSNR" in line and "MI(code; horizontal sign)" in line for line in out) == 2
    mirrored = [float(line.split("mirrored left-right ")[1]) for line in out if "LAM: next-frame PSNR" in line]
    assert len(mirrored) == 2 and all(0 <= m <= 1 for m in mirrored)
    tok_lines = [line for line in out if line.startswith(f"  tokenizer {tmp_path / 'tok.pt'}")]
    assert len(tok_lines) == 2  # one per stride
    # The pairs of stride 3 scroll (a random agent drifts), so the share is read.
    assert int(tok_lines[1].split("sideways ")[1].split(",")[0]) > 0
    assert all(0 <= float(line.split()[-1]) <= 1 for line in tok_lines)
    # A LAM with a history reads each pair after its past frame (clips of 2 * stride + 1 frames).
    hist = LatentActionModel(lam_cfg(image_size=(64, 64), patch_size=16, max_frames=4, min_history=1))
    save_checkpoint(tmp_path / "hist.pt", hist, StageConfig("lam", hist.cfg))
    out = run("benchmarks/motion.py", "--data_dir", str(coinrun_dir), "--lam", str(tmp_path / "hist.pt"),
              "--strides", "1", "3", "--pairs", "40", "--max_shift", "3", "--eval_clips", "10",
              "--eval_clip_len", "5").splitlines()
    assert sum("LAM: next-frame PSNR" in line and "MI(code; vertical sign)" in line for line in out) == 2


def test_action_scroll_benchmark_scores_every_action(coinrun_dir):
    out = run("benchmarks/action_scroll.py", "--data_dir", str(coinrun_dir), "--clips", "8",
              "--maskgit_steps", "2").splitlines()
    assert out[0].startswith("pairs ") and "maskgit_steps 2" in out[0]
    assert int(out[0].split("scrolling sideways ")[1].split()[0]) > 0  # the fixture's random agent drifts
    best = float(out[1].split("best of the 8 actions ")[1])
    per_action = [line for line in out if line.startswith("action ")]
    assert [line.split(":")[0] for line in per_action] == [f"action {a}" for a in range(8)]
    alike = [float(line.split("alike ")[1].split(";")[0]) for line in per_action]
    assert 0 <= max(alike) <= best <= 1  # the best of the actions is at least each one
    for line in per_action:
        left, right = float(line.split("left ")[1].split(",")[0]), float(line.split("right ")[1].split(" ")[0])
        assert 0 <= left + right <= 1


def test_prune_codes_benchmark_scores_each_codebook_size(coinrun_dir):
    out = run("benchmarks/prune_codes.py", "--tokenizer", "genie_env/assets/coinrun/tokenizer.pt", "--data_dir",
              str(coinrun_dir), "--heldout_dir", str(coinrun_dir), "--keep", "256", "16", "--frames", "24")
    rows = {int(r.split(" | ")[0][2:]): r.split(" | ")[1:] for r in out.splitlines() if r.startswith("| ") and r[2].isdigit()}
    assert set(rows) == {256, 16}
    assert rows[256][0] == rows[256][1] == "0.00%"  # nothing dropped from the whole codebook
    assert float(rows[16][0][:-1]) > 0 and float(rows[16][2]) <= 16  # 16 codes: some patches moved, perplexity <= 16
    assert float(rows[16][4].rstrip(" |")) < float(rows[256][4].rstrip(" |"))  # fewer codes, a worse picture


def test_drift_actions_benchmark_runs_each_kind_of_action(coinrun_dir, tmp_path):
    import json
    run("benchmarks/drift_actions.py", "--data_dir", str(coinrun_dir), "--stats_dir", str(coinrun_dir),
        "--prompts", "2", "--steps", "3", "--replay_steps", "3", "--out", str(tmp_path))
    result = json.loads((tmp_path / "drift_actions.json").read_text())
    assert sum(result["code frequencies"]) == pytest.approx(1, abs=0.01)
    assert sum(c["share"] for c in result["codes on real frames"].values()) == pytest.approx(1, abs=0.01)
    for mode in ("uniform", "marginal", "data"):
        assert set(result[mode]["colour distance by step"]) == {"1", "3"}
        assert (tmp_path / f"drift_{mode}.png").stat().st_size > 0
    # real episodes under their own codes, scored against their own frames too
    replayed = result["replay"]
    assert replayed["episodes"] == 2 and set(replayed) >= {"1", "3"}
    assert 0 <= replayed["3"]["world vs the real frame"] <= 1 and replayed["3"]["PSNR vs the real frame (dB)"] > 5
    assert (tmp_path / "drift_replay.png").stat().st_size > 0
