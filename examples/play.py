"""Play the bundled CoinRun world (or your own checkpoints) with the keyboard.

    python examples/play.py [--tokenizer_path T --dynamics_path D] [--prompt image.png]

Same as ``genie-env play``; the keys are listed in ``genie_env/play.py``.
"""
import sys

from genie_env.cli import main

if __name__ == "__main__":
    sys.exit(main(["play", *sys.argv[1:]]))
