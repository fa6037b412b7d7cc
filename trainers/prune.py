"""``genie-env prune``: a tokenizer checkpoint cut to the codes its training frames use most.

``genie-env export --prune_codes K`` prunes a finished world, tokenizer and dynamics model together.
This command prunes a tokenizer alone, before any dynamics model is trained on it: with a k-means
tokenizer the codes are fixed once fitted, so the pruned file can start the decoder's fine-tune
(``train_tokenizer --init_from``) and a dynamics run whose ``vocab_size`` is K at the same time.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from genie_env.prune import check_keep, choose_codes, code_counts, prune_tokenizer
from trainers.export import load_for_export, save_for_export

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer_path", required=True, help="a trained tokenizer checkpoint (vq or kmeans)")
    p.add_argument("--data_dir", required=True, help="the H5 episodes it was trained on; its codes are counted there")
    p.add_argument("--keep", type=int, required=True, metavar="K", help="how many of the most used codes to keep")
    p.add_argument("--out", required=True, help="where to write the pruned tokenizer checkpoint (weights only)")
    p.add_argument("--frames", type=int, default=4096, help="training frames to count the codes on")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.resolve() == Path(args.tokenizer_path).resolve():
        raise ValueError(f"--out {out} is --tokenizer_path: write the pruned tokenizer to a new file")
    tokenizer, stage, step = load_for_export(args.tokenizer_path, "tokenizer")
    check_keep(args.keep, tokenizer.cfg.num_codes)
    counts = code_counts(tokenizer, args.data_dir, stage.data, frames=args.frames)
    kept, summary = choose_codes(counts, args.keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = save_for_export(out, prune_tokenizer(tokenizer, kept), stage, step, {"pruned": summary})
    log.info("pruned the codebook: %s; wrote %s (%.1f MB)", json.dumps(summary), out, size / 2**20)
    return 0
