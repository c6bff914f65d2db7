"""Request bodies -> fields, in memory and under a size cap, or a :class:`RequestError` naming the field.

Accepted: ``application/json`` (an object), ``multipart/form-data`` (fields and
file parts) and ``application/x-www-form-urlencoded``. The body is read up to
a cap before anything is parsed; multipart is parsed in memory with
python-multipart's streaming parser (Starlette's own form parsing spools large
files to a temporary file, and nothing on the server is written from a request).

Every field is checked by type before a handler sees it (:data:`FIELD_TYPES`): strings
are strings (valid Unicode), integers are finite whole numbers written with ASCII digits
(JSON ``Infinity``, ``1e400``, 5,000 digits, ``"٣"`` and ``"5_0"`` are refused); a JSON body
nests at most :data:`MAX_JSON_DEPTH` levels; a field given twice (two image parts, a
repeated JSON key) is refused rather than the last one silently winning.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

from zscir.serve.service import RequestError

try:
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart < 0.0.13 names its module "multipart"
    from multipart.multipart import MultipartParser, parse_options_header  # type: ignore


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass
class Body:
    fields: dict[str, object] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)

    def check_names(self, allowed: tuple[str, ...]) -> None:
        for name in [*self.fields, *self.files]:
            if name not in allowed:
                raise RequestError(422, _short(name), f"unknown field {_short(name)!r}; expected: {', '.join(allowed)}")


MAX_JSON_DEPTH = 8        # the API's bodies nest 3 levels; deeper is refused, not recursed into
MAX_INT_DIGITS = 18       # a count or an offset, never a bignum
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: int() would also take "٣" and "5_0"


def _short(name: object, limit: int = 60) -> str:
    text = str(name)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_string(name: str, value: object) -> str | None:
    """A string field: absent (None) or a str that is valid Unicode (no lone surrogates)."""
    if value is None or isinstance(value, str) and not _has_surrogates(value):
        return value
    if isinstance(value, str):
        raise RequestError(422, name, f"field {name!r} is not valid Unicode text")
    raise RequestError(422, name, f"field {name!r}: expected a string, got {_kind(value)}")


def check_integer(name: str, value: object) -> int | None:
    """An integer field: absent (None or ""), a JSON integer, a float with a whole value, or ASCII digits."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(422, name, f"field {name!r}: expected an integer, got {_kind(value)}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or not value.is_integer():
            raise RequestError(422, name, f"field {name!r}: expected an integer, got {value!r}")
        value = int(value)
    if isinstance(value, str):
        text = value.strip()
        sign = -1 if text.startswith("-") else 1
        digits = text[1:] if text[:1] in "+-" else text
        if not _DIGITS.fullmatch(digits) or len(digits) > MAX_INT_DIGITS:
            raise RequestError(422, name, f"field {name!r}: expected an integer in ASCII digits, "
                                          f"got {_short(value)!r}")
        value = sign * int(digits)
    if abs(value) >= 10 ** MAX_INT_DIGITS:
        raise RequestError(422, name, f"field {name!r}: {_short(value)} is out of range")
    return value


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# field name -> its check; the names of every route's fields (unknown names are refused per route)
FIELD_TYPES: dict[str, Callable[[str, object], object]] = {
    "image_base64": check_string, "image_id": check_string, "text": check_string, "model": check_string,
    "session": check_string, "choice": check_string, "k": check_integer, "offset": check_integer,
}


def check_field_types(fields: dict) -> dict:
    """``fields`` with every known field checked (:data:`FIELD_TYPES`) and integers as ``int``."""
    return {name: FIELD_TYPES[name](name, value) if name in FIELD_TYPES else value
            for name, value in fields.items()}


async def read_body(request, cap: int, field_name: str) -> bytes:
    """The raw body, refused with 413 as soon as it is known to pass ``cap`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise RequestError(413, field_name, f"request body of {int(declared)} bytes is over the server's cap of "
                                            f"{cap} bytes (for {field_name!r}: see --max-upload-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise RequestError(413, field_name, f"request body is over the server's cap of {cap} bytes "
                                                f"(for {field_name!r}: see --max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(data: bytes, content_type: str | None) -> Body:
    ctype, params = parse_options_header(content_type or "")
    ctype = ctype.decode("latin-1").lower()
    if ctype == "application/json" or (not ctype and data.lstrip().startswith(b"{")):
        obj = parse_json(data)
        if not isinstance(obj, dict):
            raise RequestError(400, "body", "the JSON body must be an object, "
                                            "e.g. {\"image_id\": \"...\", \"text\": \"...\"}")
        return Body(fields=check_field_types(obj))
    if ctype == "multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise RequestError(400, "body", "multipart/form-data without a boundary")
        return _parse_multipart(data, boundary)
    if ctype == "application/x-www-form-urlencoded":
        try:
            pairs = urllib.parse.parse_qsl(data.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise RequestError(400, "body", "the form body is not UTF-8") from None
        fields: dict[str, object] = {}
        for name, value in pairs:
            if name in fields:
                raise RequestError(422, _short(name), f"field {_short(name)!r} is given twice")
            fields[name] = value
        return Body(fields=check_field_types(fields))
    if not data:
        return Body()
    raise RequestError(415, "body", f"unsupported Content-Type {ctype or '(none)'!r}: send application/json or "
                                    "multipart/form-data")


class _BadJSON(ValueError):
    pass


def _refuse_constant(name: str):
    raise _BadJSON(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _BadJSON(f"{_short(text, 20)} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _BadJSON(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _unique_keys(pairs: list) -> dict:
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise _BadJSON(f"key {_short(key)!r} is given twice")
        obj[key] = value
    return obj


def parse_json(data: bytes) -> object:
    """JSON with finite numbers, bounded integers, unique keys and at most :data:`MAX_JSON_DEPTH` levels."""
    try:
        obj = json.loads(data or b"null", parse_constant=_refuse_constant, parse_float=_finite_float,
                         parse_int=_bounded_int, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RequestError(400, "body", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and _BadJSON are ValueErrors
        raise RequestError(400, "body", f"the request body is not valid JSON ({_short(e, 160)})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise RequestError(400, "body", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _depth(obj: object) -> int:
    deepest, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _parse_multipart(data: bytes, boundary: bytes) -> Body:
    parts: list[dict] = []
    header = {"field": b"", "value": b""}

    def on_part_begin():
        parts.append({"headers": {}, "data": []})

    def on_header_field(buf, start, end):
        header["field"] += buf[start:end]

    def on_header_value(buf, start, end):
        header["value"] += buf[start:end]

    def on_header_end():
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(buf, start, end):
        parts[-1]["data"].append(bytes(buf[start:end]))

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data})
    try:
        parser.write(data)
        parser.finalize()
    except Exception as e:  # noqa: BLE001 - the parser raises its own error types
        raise RequestError(400, "body", f"malformed multipart/form-data body ({e})") from None
    body = Body()
    for part in parts:
        disposition, options = parse_options_header(part["headers"].get("content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise RequestError(400, "body", "a multipart part without Content-Disposition: form-data; name=...")
        name = name.decode("utf-8", "replace")
        if name in body.files or name in body.fields:
            raise RequestError(422, _short(name), f"field {_short(name)!r} is given twice "
                                                  "(one reference image, one value per field)")
        content = b"".join(part["data"])
        if b"filename" in options:
            body.files[name] = Upload(options[b"filename"].decode("utf-8", "replace"), content)
        else:
            try:
                body.fields[name] = content.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(400, name, f"field {name!r} is not UTF-8 text") from None
    body.fields = check_field_types(body.fields)
    return body


_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.I)


def decode_base64(value: object, field_name: str, cap: int) -> bytes:
    if not isinstance(value, str) or not value.strip():
        raise RequestError(422, field_name, f"field {field_name!r} must be a non-empty base64 string "
                                            "(optionally a data: URI)")
    text = re.sub(r"\s+", "", _DATA_URI.sub("", value.strip(), count=1))
    size = len(text) * 3 // 4 - text[-2:].count("=")  # what it decodes to, before decoding it
    if size > cap:
        raise RequestError(413, field_name, f"field {field_name!r} decodes to {size} bytes, over the "
                                            f"{cap}-byte upload cap (--max-upload-mb)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, field_name, f"field {field_name!r} is not valid base64") from None
    if len(data) > cap:
        raise RequestError(413, field_name, f"field {field_name!r} decodes to {len(data)} bytes, over the "
                                            f"{cap}-byte upload cap (--max-upload-mb)")
    return data
