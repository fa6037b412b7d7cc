"""The ``genie-env`` command: one entry point, a subcommand per job."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="genie-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    from genie_env.data import collect
    p = sub.add_parser("collect", help="record episodes of a Procgen or Gymnasium env to H5 files")
    collect.add_arguments(p)
    p.set_defaults(func=collect.run)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        # Bad input is reported as one sentence, not a traceback.
        print(f"genie-env {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
