"""A metadata table per index: fields per image (category, brand, price ...), returned with hits and filtered on.

    zscir index --images DIR --out INDEX --metadata items.csv     # or items.jsonl
    import_metadata("INDEX", "items.csv")    # the same, from Python
    table = load_metadata("INDEX")
    table.rows_matching({"category": "dress"}, row_of_id)         # -> sorted row numbers

- The file: CSV with a header row, or JSON Lines (one object a line). Each row is keyed by the
  column ``id`` (an image id of the index) or else ``path`` (the image's file: absolute, or relative
  to the indexed images folder). Every other column is a field. CSV values are strings; JSON values
  are kept as they are (strings, numbers, booleans, null), lists and objects are refused.
- Stored as ``INDEX/metadata.json`` (written atomically), keyed by image id; it survives index updates
  (images added later simply have no fields). Rows that match no image are counted and refused
  only when none matches.
- A filter is {field: value} or {field: [value, ...]} (any of those values); fields combine with AND;
  equality is JSON equality (``"5"`` is not ``5``).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from zscir.errors import ZscirError
from zscir.utils.atomic import atomic_write_json
from zscir.utils.jsonl import read_jsonl

METADATA_FILE = "metadata.json"
FORMAT = "zscir-metadata"
VERSION = 1
KEY_COLUMNS = ("id", "path")


def _read_rows(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = [dict(r) for r in reader]
                if reader.fieldnames is None:
                    raise ZscirError(f"metadata file {str(path)!r} (option --metadata) is empty: expected a header row")
                if any(None in r for r in rows):
                    raise ZscirError(f"metadata file {str(path)!r}: a row has more columns than the header")
                return rows
        if suffix in (".jsonl", ".ndjson"):
            rows = []
            for n, row in read_jsonl(path, lambda n: f"metadata file {str(path)!r} line {n}", "not JSON ({msg})"):
                if not isinstance(row, dict):
                    raise ZscirError(f"metadata file {str(path)!r} line {n}: expected a JSON object")
                rows.append(row)
            return rows
    except (OSError, UnicodeDecodeError) as e:
        raise ZscirError(f"metadata file {str(path)!r} (option --metadata) cannot be read: {e}") from None
    raise ZscirError(f"metadata file {str(path)!r} (option --metadata): expected a .csv or .jsonl file")


def import_metadata(index_root: str | os.PathLike, source: str | os.PathLike, ids: Sequence[str],
                    paths: Sequence[str | None], images_root: str | None = None) -> dict:
    """Read ``source``, key its rows by image id, write ``index_root/metadata.json``; a summary back."""
    source = Path(source)
    rows = _read_rows(source)
    if not rows:
        raise ZscirError(f"metadata file {str(source)!r} (option --metadata) has no rows")
    columns = list(dict.fromkeys(c for r in rows for c in r))
    key = next((c for c in KEY_COLUMNS if c in columns), None)
    if key is None:
        raise ZscirError(f"metadata file {str(source)!r}: expected a column 'id' (image id) or 'path' (image file), "
                         f"got {', '.join(map(repr, columns[:8]))}")
    known = set(ids)
    id_of_path = {os.path.normpath(p): i for i, p in zip(ids, paths) if p}
    table: dict[str, dict] = {}
    unmatched: list[str] = []
    for n, row in enumerate(rows, 1):
        value = row.get(key)
        if not isinstance(value, str) or not value:
            raise ZscirError(f"metadata file {str(source)!r} row {n}: column {key!r} must be a non-empty string")
        for name, v in row.items():
            if isinstance(v, (list, dict)):
                raise ZscirError(f"metadata file {str(source)!r} row {n}: field {name!r} is a list or object; "
                                 "expected a string, number, boolean or null")
        if key == "id":
            image_id = value if value in known else None
        else:
            p = value if os.path.isabs(value) or not images_root else os.path.join(images_root, value)
            image_id = id_of_path.get(os.path.normpath(p))
        if image_id is None:
            unmatched.append(value)
            continue
        table[image_id] = {k: v for k, v in row.items() if k not in KEY_COLUMNS}
    if not table:
        raise ZscirError(f"metadata file {str(source)!r}: none of its {len(rows)} rows names an image of the index "
                         f"(by {key!r}; e.g. {unmatched[0]!r})")
    fields = [c for c in columns if c not in KEY_COLUMNS]
    atomic_write_json(Path(index_root) / METADATA_FILE, {"format": FORMAT, "version": VERSION, "source": source.name,
                                                        "key": key, "fields": fields, "rows": table}, indent=None)
    return {"file": str(source), "rows": len(rows), "matched": len(table), "unmatched": len(unmatched),
            "unmatched_examples": unmatched[:5], "fields": fields}


class Metadata:
    """The table of an index: fields per image id, with an inverted list per (field, value) for filters."""

    def __init__(self, fields: list[str], rows: dict[str, dict]):
        self.fields, self.rows = fields, rows
        self._postings: dict[str, dict[str, list[str]]] | None = None

    def get(self, image_id: str) -> dict | None:
        return self.rows.get(image_id)

    def _inverted(self) -> dict[str, dict[str, list[str]]]:
        if self._postings is None:
            postings: dict[str, dict[str, list[str]]] = {f: {} for f in self.fields}
            for image_id, values in self.rows.items():
                for name, v in values.items():
                    postings.setdefault(name, {}).setdefault(json.dumps(v), []).append(image_id)
            self._postings = postings
        return self._postings

    def rows_matching(self, conditions: Mapping[str, Any], row_of_id: Mapping[str, int]) -> np.ndarray:
        """Sorted index rows whose fields match every condition (a value, or a list of accepted values)."""
        postings = self._inverted()
        selected: set[str] | None = None
        for name, wanted in conditions.items():
            values = wanted if isinstance(wanted, list) else [wanted]
            ids = {i for v in values for i in postings.get(name, {}).get(json.dumps(v), ())}
            selected = ids if selected is None else selected & ids
        rows = [row_of_id[i] for i in (selected or ()) if i in row_of_id]
        return np.asarray(sorted(rows), dtype=np.int64)


def load_metadata(index_root: str | os.PathLike) -> Metadata | None:
    """The index's table, or None when it has none."""
    path = Path(index_root) / METADATA_FILE
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != FORMAT or not isinstance(data.get("rows"), dict):
            raise ValueError("not a zscir metadata table")
        return Metadata(list(data.get("fields") or []), data["rows"])
    except (OSError, ValueError, AttributeError) as e:
        raise ZscirError(f"metadata table {str(path)!r} is damaged ({e}): import it again with "
                         f"`zscir index --out {index_root} --metadata FILE`") from None
