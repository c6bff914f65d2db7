"""Captioners that look captions up instead of generating them: caption files, shard text, the shapes world.

They need no decoded images (``needs_images = False``) and are not cached (``cacheable =
False``): the table is the cache.

- ``file``           captions from a JSONL, CSV/TSV or JSON (id -> caption) file;
- ``webdataset-txt`` the ``.txt`` member of each webdataset sample (CC3M's alt text);
- ``shapes-world``   the shapes world's own captions (``<world>/unlabeled/captions.jsonl``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from zscir.errors import ZscirError
from zscir.generation.base import Captioner
from zscir.utils.hashing import sha256_file
from zscir.utils.jsonl import read_jsonl


class CaptionTable:
    """id -> caption, found by exact id, else by unambiguous file name, else by unambiguous stem.

    Caption files are written by other tools: ``images/dog.jpg``, ``dog.jpg`` and
    ``dog`` should all find the same caption when that cannot mean two images.
    """

    _AMBIGUOUS = object()

    def __init__(self):
        self.exact: dict[str, str] = {}
        self.by_name: dict[str, object] = {}
        self.by_stem: dict[str, object] = {}

    def add(self, key: str, caption: str) -> None:
        key = _normalise_id(key)
        self.exact[key] = caption
        name = PurePosixPath(key).name
        for index, k in ((self.by_name, name), (self.by_stem, name.split(".")[0])):
            index[k] = caption if index.get(k, caption) == caption else self._AMBIGUOUS

    def get(self, item_id: str) -> str | None:
        key = _normalise_id(item_id)
        if key in self.exact:
            return self.exact[key]
        name = PurePosixPath(key).name
        for index, k in ((self.by_name, name), (self.by_stem, name.split(".")[0])):
            found = index.get(k)
            if found is not None:
                return None if found is self._AMBIGUOUS else found
        return None

    def __len__(self) -> int:
        return len(self.exact)


def _normalise_id(key: str) -> str:
    key = str(key).replace("\\", "/")
    return key[2:] if key.startswith("./") else key


class LookupCaptioner(Captioner):
    needs_images = False
    cacheable = False

    def __init__(self, table: CaptionTable, identity: str):
        self.table, self.identity = table, identity

    def caption(self, items, images):
        return [self.table.get(item.id) for item in items]


ID_FIELDS = ("id", "image", "file", "path", "key", "image_id", "filename", "file_name")
CAPTION_FIELDS = ("caption", "text", "alt_text", "alt", "title")


def read_caption_file(path: str | Path) -> CaptionTable:
    """Read captions from JSONL (rows), CSV/TSV (header row) or JSON (object id -> caption, or list of rows)."""
    path = Path(path)
    if not path.is_file():
        raise ZscirError(f"captions file {path}: no such file")
    suffix = path.suffix.lower()
    reader = CAPTION_FILE_READERS.get(suffix)
    if reader is None:
        raise ZscirError(f"captions file {path}: expected a .jsonl, .csv, .tsv or .json file, got {suffix or 'no extension'!r}")
    table = CaptionTable()
    for where, row in reader(path):
        if isinstance(row, tuple):
            key, caption = row
        else:
            key = next((row[f] for f in ID_FIELDS if row.get(f) not in (None, "")), None)
            caption = next((row[f] for f in CAPTION_FIELDS if row.get(f) not in (None, "")), None)
        if key is None or not isinstance(caption, str):
            raise ZscirError(f"captions file {path}, {where}: expected an id field (one of {', '.join(ID_FIELDS)}) "
                             f"and a caption field (one of {', '.join(CAPTION_FIELDS)})")
        table.add(str(key), caption.strip())
    return table


def _read_jsonl(path: Path):
    for n, row in read_jsonl(path, lambda n: f"captions file {path}, line {n}"):
        if not isinstance(row, dict):
            raise ZscirError(f"captions file {path}, line {n}: expected a JSON object per line")
        yield f"line {n}", row


def _read_csv(path: Path):
    with open(path, encoding="utf-8", newline="") as f:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        for n, row in enumerate(csv.DictReader(f, delimiter=delimiter), 2):
            yield f"line {n}", {k.strip().lower(): v for k, v in row.items() if k is not None}


def _read_json(path: Path):
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ZscirError(f"captions file {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict):
        for key, caption in data.items():
            yield f"key {key!r}", (key, caption)
    elif isinstance(data, list):
        for n, row in enumerate(data):
            if not isinstance(row, dict):
                raise ZscirError(f"captions file {path}, entry {n}: expected an object with id and caption")
            yield f"entry {n}", row
    else:
        raise ZscirError(f"captions file {path}: expected an object id -> caption or a list of rows")


CAPTION_FILE_READERS = {".jsonl": _read_jsonl, ".ndjson": _read_jsonl, ".csv": _read_csv,
                        ".tsv": _read_csv, ".json": _read_json}


class FileCaptioner(LookupCaptioner):
    name = "file"

    def __init__(self, path: str):
        super().__init__(read_caption_file(path), f"file:sha256:{sha256_file(path)[:16]}")


class WebdatasetTextCaptioner(Captioner):
    """The sample's ``.txt`` member (img2dataset stores the alt text there), else ``.json``'s "caption"."""

    name = "webdataset-txt"
    identity = "webdataset-txt"
    needs_images = False
    cacheable = False

    def caption(self, items, images):
        return [self._text(item) for item in items]

    @staticmethod
    def _text(item) -> str | None:  # an ImageItem of a webdataset source
        if "txt" in item.extras:
            text = item.extras["txt"].decode("utf-8", errors="replace").strip()
            return text or None
        try:
            text = json.loads(item.extras["json"]).get("caption")
        except (KeyError, ValueError, AttributeError):
            return None
        return text.strip() if isinstance(text, str) and text.strip() else None


# --- the shapes world --------------------------------------------------------------------------

WORLD_CAPTIONS = "unlabeled/captions.jsonl"


@dataclass(frozen=True)
class WorldCaption:
    id: str
    file: str
    caption: str
    subject: str
    attribute: str


def read_world_captions(world: str | Path) -> list[WorldCaption]:
    """The world's unlabeled captions with their ground-truth subject/attribute split."""
    path = Path(world) / WORLD_CAPTIONS
    if not path.is_file():
        raise ZscirError(f"shapes world {world}: expected {WORLD_CAPTIONS} inside it (build one with the world tools)")
    rows = []
    for where, row in _read_jsonl(path):
        try:
            rows.append(WorldCaption(*(str(row[k]) for k in ("id", "file", "caption", "subject", "attribute"))))
        except KeyError as e:
            raise ZscirError(f"{path}, {where}: missing field {e.args[0]!r} "
                             "(expected id, file, caption, subject, attribute)") from None
    return rows


class ShapesWorldCaptioner(LookupCaptioner):
    name = "shapes-world"

    def __init__(self, world: str):
        rows = read_world_captions(world)
        table = CaptionTable()
        for row in rows:
            table.add(row.file, row.caption)
            table.add(row.id, row.caption)
        super().__init__(table, f"shapes-world:sha256:{sha256_file(Path(world) / WORLD_CAPTIONS)[:16]}")
        self.splits = {row.id: (row.subject, row.attribute) for row in rows}
