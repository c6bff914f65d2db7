"""Per-image strings of an opened index (ids, paths, content keys) in compact arrays.

A Python list of a million short strings costs ~60-100 bytes per string of object
overhead beyond its characters, and a dict from string to row as much again. Here a
column is one UTF-8 byte buffer and an int64 offset array (numpy), ~8 bytes per row
beyond the characters; :class:`Lookup` finds the rows holding a string through a sorted
array of the strings' hashes (16 bytes per row), checking each candidate's actual text.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np


class StringColumn(Sequence):
    """An immutable sequence of ``str | None`` stored as UTF-8 bytes + offsets."""

    def __init__(self, values: Iterable[str | None]):
        encoded = [None if v is None else v.encode("utf-8", "surrogatepass") for v in values]
        lengths = np.fromiter((0 if e is None else len(e) for e in encoded), dtype=np.int64, count=len(encoded))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._none = np.fromiter((e is None for e in encoded), dtype=bool, count=len(encoded))
        self._blob = np.frombuffer(b"".join(e for e in encoded if e is not None), dtype=np.uint8)
        if not self._none.any():
            self._none = None

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._none is not None and self._none[i]:
            return None
        return self._blob[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str | None]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and all(a == b for a, b in zip(self, other))

    @property
    def nbytes(self) -> int:
        return self._offsets.nbytes + self._blob.nbytes + (0 if self._none is None else self._none.nbytes)


class Lookup:
    """string -> the rows holding it, for one or more columns (the first non-None value of each row)."""

    def __init__(self, *columns: Sequence[str | None]):
        n = len(columns[0])
        values = (next((c[i] for c in columns if c[i] is not None), None) for i in range(n))
        hashes, rows = [], []
        for row, v in enumerate(values):
            if v is not None:
                hashes.append(hash(v))
                rows.append(row)
        h = np.array(hashes, dtype=np.int64)
        order = np.argsort(h, kind="stable")
        self._hashes, self._rows, self._columns = h[order], np.array(rows, dtype=np.int64)[order], columns

    def rows(self, value: str | None) -> list[int]:
        if value is None:
            return []
        h = hash(value)
        lo, hi = np.searchsorted(self._hashes, h, "left"), np.searchsorted(self._hashes, h, "right")
        out = []
        for row in self._rows[lo:hi].tolist():
            if next((c[row] for c in self._columns if c[row] is not None), None) == value:
                out.append(row)
        return out

    def __contains__(self, value) -> bool:
        return bool(self.rows(value))

    @property
    def nbytes(self) -> int:
        return self._hashes.nbytes + self._rows.nbytes
