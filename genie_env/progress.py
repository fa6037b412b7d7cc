"""Progress bars that suit where the output goes.

On a terminal: a tqdm bar redrawn in place. Anywhere else (CI, ``nohup``, a log file) a bar
redrawn with carriage returns piles thousands of updates into one line, so there the same bar
prints a plain line every ``interval`` seconds instead.
"""
from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm


class _Lines:
    """A stream for tqdm that turns each redraw into one line of its own."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(*args, interval: float = 10.0, stream: TextIO | None = None, **kwargs) -> tqdm:
    """``tqdm(*args, **kwargs)`` on a terminal; one line every ``interval`` seconds elsewhere."""
    stream = stream or sys.stderr
    if stream.isatty():
        return tqdm(*args, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return tqdm(*args, file=_Lines(stream), mininterval=interval, maxinterval=interval, ncols=100,
                ascii=True, **kwargs)
