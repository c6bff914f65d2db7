"""Query input: reference images and modification texts, checked before any model is loaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from zscir.data.images import BadImageError, decode_image, to_rgb
from zscir.errors import ZscirError
from zscir.data.keys import content_key, safe_name
from zscir.utils.jsonl import read_jsonl

ImageInput = str | os.PathLike | Image.Image


def read_reference(image: ImageInput, what: str = "reference image") -> tuple[Image.Image, str | None]:
    """(the reference as RGB, its content key ``sha256:...`` or None for an in-memory image).

    Decoded by the project's one decoder (EXIF rotation, 16-bit, palette, alpha on
    white, pixel limit), so a query sees the same pixels its gallery copy was indexed with.
    """
    if isinstance(image, Image.Image):
        return to_rgb(image), None
    path = Path(image)
    label = safe_name(str(path))
    if path.is_dir():
        raise ZscirError(f"{what} {label!r} is a folder: expected an image file")
    if not path.is_file():
        raise ZscirError(f"{what} {label!r} does not exist")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ZscirError(f"{what} {label!r} cannot be read ({e.strerror or e})") from None
    try:
        return decode_image(data, label), content_key(data)
    except BadImageError as e:
        detail = f" ({e.detail.splitlines()[0][:120]})" if e.detail else ""
        raise ZscirError(f"{what} {label!r} is not a readable image: {e.reason}{detail}") from None


def load_reference(image: ImageInput, what: str = "reference image") -> Image.Image:
    """A reference image as RGB, or a one-line error naming the file."""
    return read_reference(image, what)[0]


def check_text(text: str, what: str = "modification text") -> str:
    if not isinstance(text, str):
        raise ZscirError(f"the {what} is {json.dumps(text)[:40]}, not text: expected a string, "
                         "e.g. \"make the circle red\"")
    if not text.strip():
        raise ZscirError(f"the {what} is empty: expected a change to apply to the reference, "
                         "e.g. \"make the circle red\"")
    return text.strip()


def read_queries(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[dict]]:
    """Rows {"ref": IMAGE, "text": "..."} of a JSONL file -> (usable queries, skipped rows with their error).

    A malformed line is an error (the file is wrong: not an object, no "ref" or "text", a "text"
    that is not a string); a row whose image is missing or unreadable, or whose text is empty,
    is skipped and reported (the rest still runs).
    A relative ref is taken from the current directory, else from the JSONL file's folder.
    """
    file = Path(path)
    if file.is_dir():
        raise ZscirError(f"queries file {str(path)!r} is a folder: expected a JSONL file (option --queries)")
    if not file.is_file():
        raise ZscirError(f"queries file {str(path)!r} does not exist (option --queries)")
    queries, skipped = [], []
    for n, row in read_jsonl(path, invalid="not a JSON object ({msg})"):
        if not isinstance(row, dict) or "ref" not in row or "text" not in row:
            raise ZscirError(f"{path}:{n}: expected an object with \"ref\" and \"text\" fields")
        if not isinstance(row["text"], str):
            raise ZscirError(f"{path}:{n}: field \"text\" is {json.dumps(row['text'])[:40]}: expected a string")
        ref = Path(str(row["ref"]))
        if not ref.is_absolute() and not ref.exists() and (file.parent / ref).exists():
            ref = file.parent / ref
        try:
            load_reference(ref)
            check_text(row["text"])
        except ZscirError as e:
            skipped.append({"line": n, "error": str(e)})
            continue
        queries.append((str(ref), row["text"]))
    if not queries:
        detail = f": {skipped[0]['error']} (line {skipped[0]['line']})" if skipped else ""
        raise ZscirError(f"no usable query in {path}{detail}")
    return queries, skipped
