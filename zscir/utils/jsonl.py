"""Reading a JSONL file: one JSON value a line, blank lines skipped, a bad line a one-line error.

    for line, row in read_jsonl(path):                      # "<path>:<line>: not valid JSON (<reason>)"
    for line, row in read_jsonl(path, where=lambda n: f"captions file {path}, line {n}")

The caller checks what a row must hold (it knows the fields); this module only reads. The file is
read as UTF-8, line by line (a file larger than memory is fine).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterator

from zscir.errors import ZscirError


def read_jsonl(path: str | os.PathLike, where: Callable[[int], str] | None = None,
               invalid: str = "not valid JSON ({msg})") -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of ``path``, numbered from 1 over all lines.

    A line that is not JSON raises ZscirError ``"<where(n)>: <invalid>"``: ``where`` names the file and
    line (default ``<path>:<n>``), ``invalid`` the fault (``{msg}``: the parser's reason, ``{error}``:
    its full text).
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                location = where(number) if where else f"{path}:{number}"
                raise ZscirError(f"{location}: {invalid.format(msg=e.msg, error=e)}") from None
            yield number, value
