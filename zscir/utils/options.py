"""Click parameter types shared by every command: option values are checked before any work starts.

``click.IntRange`` covers integers; :class:`FiniteFloat` adds what ``click.FloatRange``
lacks (``nan`` and ``inf`` pass a FloatRange with an open side). Bad values end in
click's usage error (exit 2), one line naming the option and the expected range.
"""

from __future__ import annotations

import math
import os

import click


class FiniteFloat(click.ParamType):
    """A finite float within optional bounds (``min_open``/``max_open`` exclude the bound itself)."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False,
                 max_open: bool = False):
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.min_open else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.max_open else '<='} {self.max:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number: expected {self._describe()}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r}: expected {self._describe()}", param, ctx)
        low_bad = self.min is not None and (number < self.min or (self.min_open and number == self.min))
        high_bad = self.max is not None and (number > self.max or (self.max_open and number == self.max))
        if low_bad or high_bad:
            self.fail(f"{number:g}: expected {self._describe()}", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self._describe()})"


POSITIVE_INT = click.IntRange(min=1)         # epochs, steps, batch sizes, workers, counts
NON_NEGATIVE_INT = click.IntRange(min=0)     # "0 disables" options
POSITIVE_FLOAT = FiniteFloat(min=0, min_open=True)   # learning rates, temperatures
NON_NEGATIVE_FLOAT = FiniteFloat(min=0)      # weight decay
DROPOUT = FiniteFloat(min=0, max=1, max_open=True)   # a probability of dropping: 1 would drop everything
FRACTION = FiniteFloat(min=0, max=1)


class OutputPath(click.Path):
    """A file or folder zscir will write: refused at parse time when it cannot be written.

    Checks what can be known before any work: the path is not of the other kind (a file given
    for a folder or the reverse), no part of it is a file, and the nearest existing folder is
    writable (a read-only mount or missing permission). A full disk shows only when writing;
    :func:`zscir.errors.user_message` turns that into one line.
    """

    def __init__(self, kind: str = "dir"):
        super().__init__(file_okay=kind == "file", dir_okay=kind == "dir")
        self.kind = kind

    def convert(self, value, param, ctx):
        value = super().convert(value, param, ctx)
        path = os.path.abspath(os.fspath(value))
        parent = path if self.kind == "dir" else os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            self.fail(f"{value}: {parent} is a file, expected a folder there", param, ctx)
        if not os.access(parent, os.W_OK | os.X_OK):
            self.fail(f"{value}: the folder {parent} is not writable (read-only or permission denied)", param, ctx)
        return value


OUTPUT_DIR = OutputPath("dir")
OUTPUT_FILE = OutputPath("file")
