"""The request fields that shape a ranking beyond k: ``offset``, ``filter`` and ``dedupe``, checked.

Each check returns the value to use or raises :class:`RequestError` (422) naming the field.
"""

from __future__ import annotations

import math
from typing import Any

from zscir.serve.errors import RequestError

MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUES = 256


def check_offset(offset: Any, gallery_size: int) -> int:
    """Results skipped before the first one returned (paging past --max-k): an integer from 0."""
    if offset in (None, ""):
        return 0
    if isinstance(offset, str) and offset.isascii() and offset.isdigit() and len(offset) <= 18:
        offset = int(offset)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= max(gallery_size, 0):
        raise RequestError(422, "offset", f"field 'offset' must be an integer from 0 to {gallery_size} "
                                          f"(the gallery size), got {str(offset)[:40]!r}")
    return offset


def check_filter(conditions: Any, metadata) -> dict | None:
    """{field: value or [values]}: images whose metadata field equals (one of) the value(s)."""
    if conditions in (None, {}):
        return None
    if not isinstance(conditions, dict):
        raise RequestError(422, "filter", "field 'filter' must be an object of {field: value or [values]}, "
                                          'e.g. {"category": "dress"}')
    if metadata is None:
        raise RequestError(422, "filter", "field 'filter': this index has no metadata table (build it with "
                                          "`zscir index --metadata FILE`)")
    if len(conditions) > MAX_FILTER_FIELDS:
        raise RequestError(422, "filter", f"field 'filter': at most {MAX_FILTER_FIELDS} fields")
    for name, wanted in conditions.items():
        if name not in metadata.fields:
            raise RequestError(422, "filter", f"field 'filter': unknown metadata field {name[:60]!r}; the table has "
                                              f"{', '.join(metadata.fields[:20]) or 'no fields'}")
        values = wanted if isinstance(wanted, list) else [wanted]
        if not values or len(values) > MAX_FILTER_VALUES or not all(_scalar(v) for v in values):
            raise RequestError(422, "filter", f"field 'filter.{name[:60]}': expected a string, number, boolean or "
                                              f"null, or a list of 1 to {MAX_FILTER_VALUES} of them")
    return conditions


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool, int)) or isinstance(v, float) and math.isfinite(v)


def check_dedupe(dedupe: Any, default_threshold: float) -> float | None:
    """``true``: collapse hits with cosine >= the server's threshold to a higher hit; a number: that threshold."""
    if dedupe in (None, False, "", "false", "0"):
        return None
    if dedupe in (True, "true", "1"):
        return default_threshold
    if isinstance(dedupe, float) and math.isfinite(dedupe) and 0.0 < dedupe <= 1.0:
        return float(dedupe)
    raise RequestError(422, "dedupe", "field 'dedupe' must be true/false or a cosine threshold in (0, 1], "
                                      f"got {str(dedupe)[:40]!r}")
