"""Typed reads of annotation fields: a wrong value is one line naming the file, the record and the field.

    rec, at = record_at(records, 3, path, id_name="id")     # at: "record 3 (id 17)" in path
    caption = str_field(rec, "relative_caption", at)        # "...: field 'relative_caption': expected a string, got null"
    members = id_list_field(rec, "img_set.members", at)     # a dotted name reads a nested object

The rules: a string field holds a JSON string; an image id is a JSON integer or a
non-empty string (kept as a string); an id list is a JSON list of ids (a string is
not one: ``"123"`` would read as three ids). A missing field reads as
``FILE: record N has no field 'F'``; a wrong one as ``FILE: record N (id X): field
'F': expected ..., got ...``. Query ids must be unique within a file, and a split
has a target for every record or for none (a test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Sequence

from zscir.errors import ZscirError

_MISSING = object()


@dataclass(frozen=True)
class At:
    """Where a value was read: the file, the record ("record 3", "images[3]") and the record's own id."""

    path: Path
    where: str
    rid: str | None = None

    def __str__(self) -> str:
        return self.where + (f" (id {self.rid})" if self.rid is not None else "")


def describe(value: Any) -> str:
    """A JSON value as an error message names it: ``null``, ``42 (a number)``, ``'123' (a string)``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value[:40]!r}{'...' if len(value) > 40 else ''} (a string)"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def wrong(at: At, name: str, expected: str, value: Any) -> NoReturn:
    raise ZscirError(f"{at.path}: {at}: field {name!r}: expected {expected}, got {describe(value)}")


def _is_id(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value != "")


def record_at(records: Sequence[Any], position: int, path: Path, id_name: str | None = None) -> tuple[dict, At]:
    """``records[position]``, checked to be a JSON object, and where it is (with its id, when it has one)."""
    record = records[position]
    if not isinstance(record, dict):
        raise ZscirError(f"{path}: record {position}: expected a JSON object, got {describe(record)}")
    rid = record.get(id_name) if id_name else None
    return record, At(path, f"record {position}", str(rid) if _is_id(rid) else None)


def raw_field(record: dict, name: str, at: At, optional: bool = False) -> Any:
    """The value of ``name`` (dotted: nested objects), or None when optional and absent."""
    value: Any = record
    parts = name.split(".")
    for n, part in enumerate(parts):
        if not isinstance(value, dict):
            wrong(at, ".".join(parts[:n]), "an object", value)
        value = value.get(part, _MISSING)
        if value is _MISSING:
            if optional:
                return None
            raise ZscirError(f"{at.path}: {at.where} has no field {name!r}"
                             + (f" (id {at.rid})" if at.rid is not None else ""))
    return value


def str_field(record: dict, name: str, at: At) -> str:
    value = raw_field(record, name, at)
    if not isinstance(value, str):
        wrong(at, name, "a string", value)
    return value


def id_field(record: dict, name: str, at: At, optional: bool = False) -> str | None:
    """An image or query id (a JSON integer or non-empty string) as a string; None if optional and absent/null."""
    value = raw_field(record, name, at, optional)
    if value is None and optional:
        return None
    if not _is_id(value):
        wrong(at, name, "an id (an integer or a non-empty string)", value)
    return str(value)


def id_list_field(record: dict, name: str, at: At, optional: bool = False, padding=()) -> tuple[str, ...]:
    """A list of ids, as strings; values in ``padding`` (e.g. SEARLE's "" fill) are left out."""
    value = raw_field(record, name, at, optional)
    if value is None and optional:
        return ()
    if not isinstance(value, list):
        wrong(at, name, "a list of ids", value)
    out = []
    for i, item in enumerate(value):
        if item in padding and not isinstance(item, bool):
            continue
        if not _is_id(item):
            wrong(at, f"{name}[{i}]", "an id (an integer or a non-empty string)", item)
        out.append(str(item))
    return tuple(out)


def str_list_field(record: dict, name: str, at: At, length: int | None = None) -> tuple[str, ...]:
    """A list of strings (exactly ``length`` of them when given)."""
    value = raw_field(record, name, at)
    expected = f"a list of {length} strings" if length is not None else "a list of strings"
    if not isinstance(value, list) or (length is not None and len(value) != length):
        wrong(at, name, expected, value)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            wrong(at, f"{name}[{i}]", "a string", item)
    return tuple(value)


def list_field(record: dict, name: str, at: At) -> list:
    value = raw_field(record, name, at)
    if not isinstance(value, list):
        wrong(at, name, "a list", value)
    return value


def unique_ids(queries: Sequence[Any], path: Path, id_name: str) -> None:
    """Query ids key the submission files: a repeated one would silently drop a query."""
    first: dict[str, int] = {}
    for n, q in enumerate(queries):
        if q.qid in first:
            raise ZscirError(f"{path}: record {n} (id {q.qid}): field {id_name!r}: expected a unique query id, "
                             f"got the id of record {first[q.qid]} again")
        first[q.qid] = n


def targets_all_or_none(queries: Sequence[Any], path: Path, target_name: str) -> None:
    """A split has ground truth for every query (val) or for none (test); a mix is an annotation error."""
    with_target = sum(1 for q in queries if q.targets)
    if 0 < with_target < len(queries):
        n, q = next((n, q) for n, q in enumerate(queries) if not q.targets)
        raise ZscirError(f"{path}: record {n} (id {q.qid}): field {target_name!r}: expected a target, as "
                         f"{with_target} of the {len(queries)} records have (a test split has none at all), got none")
