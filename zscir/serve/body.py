"""Request bodies -> fields, in memory and under a size cap, or a :class:`RequestError` naming the field.

Accepted: ``application/json`` (an object), ``multipart/form-data`` (fields and
file parts) and ``application/x-www-form-urlencoded``. The body is read up to
a cap before anything is parsed; multipart is parsed in memory with
python-multipart's streaming parser (Starlette's own form parsing spools large
files to a temporary file, and nothing on the server is written from a request).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from dataclasses import dataclass, field

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
                raise RequestError(422, name, f"unknown field {name!r}; expected: {', '.join(allowed)}")


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
        try:
            obj = json.loads(data or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, "body", f"the request body is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise RequestError(400, "body", "the JSON body must be an object, "
                                            "e.g. {\"image_id\": \"...\", \"text\": \"...\"}")
        return Body(fields=obj)
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
        return Body(fields=dict(pairs))
    if not data:
        return Body()
    raise RequestError(415, "body", f"unsupported Content-Type {ctype or '(none)'!r}: send application/json or "
                                    "multipart/form-data")


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
        content = b"".join(part["data"])
        if b"filename" in options:
            body.files[name] = Upload(options[b"filename"].decode("utf-8", "replace"), content)
        else:
            try:
                body.fields[name] = content.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(400, name, f"field {name!r} is not UTF-8 text") from None
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
