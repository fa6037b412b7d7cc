"""Compare two ``genie-env eval`` results.json files figure by figure: the rule for replacing
the bundled model is that the new world beats the old on every held-out number.

    python scripts/compare_evals.py eval/bundled/results.json eval/new/results.json 256 480

The two numbers are the worlds' tokenizer codebook sizes, for the share of the codebook in use
(perplexity / codes). Each model figure is printed as win (B better), LOSE, MIX (a list that is
better at some entries and worse at others) or tie. Figures that describe the data or a baseline
rather than the model (repeat-the-prompt, the real frames' own reconstruction, chance, k-means,
trial counts) and the run's settings are skipped; for distances and "predicted as the frame
before" lower is better.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SKIP = ("baseline", "repeat", "the real frames' reconstruction", "real held-out frames", "the real game's right "
        "scrolls right (", "the real game's left scrolls left (", "the real next frame's reconstruction",
        "chance", "k-means", "trials", "transitions", "prompts", "drift picture", "video",
        "temperature", "noise", "guidance", "passes", "MaskGIT steps", "codebook size", "tokens that change",
        "pairs that scroll", "code frequencies")
SKIP_EXACT = ("clips", "clip_len", "long clips", "drift: prompts")
LOWER = ("distance", "predicted as the frame before")


def numeric(v) -> bool:
    if isinstance(v, list):
        return bool(v) and all(isinstance(e, (int, float)) for e in v)
    return isinstance(v, (int, float))


def verdict(key: str, a, b) -> str:
    a, b = (x if isinstance(x, list) else [x] for x in (a, b))
    if len(a) != len(b):
        return "n/a (lengths differ)"
    sign = -1 if any(s in key for s in LOWER) else 1
    d = [sign * (y - x) for x, y in zip(a, b)]
    if all(v == 0 for v in d):
        return "tie"
    if all(v >= 0 for v in d):
        return "win"
    if all(v <= 0 for v in d):
        return "LOSE"
    return "MIX"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__)
        return 2
    a, b = (json.loads(Path(p).read_text()) for p in argv[:2])
    size_a, size_b = float(argv[2]), float(argv[3])
    count: dict[str, int] = {}

    def report(label: str, x, y, shown: str) -> None:
        v = verdict(label, x, y)
        count[v] = count.get(v, 0) + 1
        print(f"{v:5s} {label}: {shown}")
    for key in a:
        if key not in b or key in SKIP_EXACT or any(s in key for s in SKIP):
            continue
        x, y = a[key], b[key]
        if not (numeric(x) and numeric(y)):
            continue
        report(key, x, y, f"{x} -> {y}")
        if "perplexity" in key and "tokenizer" in key:
            sa, sb = x / size_a, y / size_b
            report(f"{key} as a share of the codes", sa, sb, f"{sa:.3f} -> {sb:.3f}")
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
