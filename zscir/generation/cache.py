"""The one generation cache: captions and edits, append-only JSONL, resumable after a kill.

An entry is keyed by the input's content and the generator's identity:
- the content key ``h``: the image's sha256 for a caption, :func:`edit_key` (sha256 of the
  caption and the instruction) for an edit;
- the generator key ``c``: the first 16 hex of sha256(identity), where the identity holds the
  backend, the model and its revision or file hash, the decoding settings and the prompt's
  hash. A new model, prompt or decoding is a new ``c``: it regenerates and never reuses.

File format, one JSON object per line:
  {"zscir": "caption-cache", "format_version": 1}                       header: the file is zscir's
  {"captioner": "<identity>", "c": "<key>"}                             declares a captioner
  {"editor": "<identity>", "c": "<key>", "about": {...}}                declares an editor
  {"h": "<content key>", "c": "<key>", "id": "...", "caption": "..."}   one output (as zscir always wrote)
  {"h": "...", "c": "...", "id": "...", "outputs": ["...", ...]}        N outputs, or an edit
  an edit entry also carries its "input": {"caption": ..., "instruction": ...}

Durability: every batch is one write, flushed and fsynced before the next batch starts, under
an exclusive ``flock`` (several jobs or ranks may append to one file); a line cut short by a
kill is dropped (truncated) on the next open, so a kill loses only the batch in flight.

zscir only appends to a file it created: a new cache is created with the header (exclusively,
so two jobs starting together agree on one file); an existing file must start with the header,
or, for caches written before the header existed, with a captioner declaration (``captioner``
and a 16-hex ``c`` and nothing else). Anything else is refused before it is touched. Ids that
are not valid UTF-8 are written as JSON ``\\udcXX`` escapes, so every line stays UTF-8.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from zscir.errors import ZscirError
from zscir.utils.atomic import _umask
from zscir.utils.hashing import sha256_bytes
from zscir.utils.locks import file_lock
from zscir.utils.paths import cache_dir
from zscir.utils.testpoint import testpoint

HEADER = {"zscir": "caption-cache", "format_version": 1}
_KEY = re.compile(r"[0-9a-f]{16}")
# what a declaration line names its generator by, per kind of output
DECLARATION_FIELD = {"caption": "captioner", "edit": "editor"}
DEFAULT_FOLDER = {"caption": "captions", "edit": "edits"}


def captioner_key(identity: str) -> str:
    """The 16-hex generator key ``c`` of an identity (captioners and editors alike)."""
    return sha256_bytes(identity.encode("utf-8"))[:16]


generator_key = captioner_key


def edit_key(caption: str, instruction: str) -> str:
    """The content key of an edit: sha256 of the JSON pair [caption, instruction]."""
    return sha256_bytes(json.dumps([caption, instruction], ensure_ascii=False).encode("utf-8"))


def default_cache_path(identity: str, kind: str = "caption") -> Path:
    """One cache file per generator identity under the zscir cache dir (captions/ or edits/)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", identity.split("|")[0])[:60]
    return cache_dir() / DEFAULT_FOLDER[kind] / f"{slug}-{captioner_key(identity)}.jsonl"


def json_line(record: dict) -> bytes:
    """One UTF-8 JSON line; text that is not valid Unicode (surrogate-escaped file names) is written as escapes."""
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(record).encode("ascii") + b"\n"


def check_cache_file(path: str | os.PathLike) -> None:
    """Refuse a file zscir did not create as a generation cache (a missing or empty file is fine)."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise ZscirError(f"--cache {path}: is a folder, expected a caption cache file")
    with open(path, "rb") as f:
        first = f.readline(4096)
    if not first:
        return
    try:
        record = json.loads(first)
    except ValueError:
        record = None
    if isinstance(record, dict) and record.get("zscir") == HEADER["zscir"]:
        if record.get("format_version") != HEADER["format_version"]:
            raise ZscirError(f"--cache {path}: caption cache format {record.get('format_version')} "
                             f"(this zscir reads {HEADER['format_version']}): upgrade zscir or choose another file")
        return
    legacy = (isinstance(record, dict) and set(record) == {"captioner", "c"} and isinstance(record["captioner"], str)
              and isinstance(record["c"], str) and _KEY.fullmatch(record["c"]) and first.endswith(b"\n"))
    if not legacy:
        raise ZscirError(f"--cache {path}: not a zscir caption cache (its first line is not zscir's header): "
                         f"zscir does not write into files it did not create; choose another file or a new name")


def create_cache_file(path: Path) -> None:
    """Create ``path`` holding only the header, unless it exists (then it must be a zscir cache).

    An existing file is never replaced: another job may already hold it open and append to it.
    """
    check_cache_file(path)
    if path.exists():
        _header_into_empty(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json_line(HEADER))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)  # exclusive: of two jobs starting together, one creates the file
        except OSError:  # the other job was first (FileExistsError), or a file system without hard links
            _header_into_empty(path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _header_into_empty(path: Path) -> None:
    """Write the header into ``path`` (created if missing) under its lock if it is empty; keep it otherwise."""
    with open(path, "ab") as f, file_lock(f):
        if f.seek(0, os.SEEK_END) == 0:  # made by hand, or created here: one small write, in place
            f.write(json_line(HEADER))
            f.flush()
            os.fsync(f.fileno())
    check_cache_file(path)


def outputs_of(value: str | list[str] | None) -> list[str] | None:
    """An entry's outputs as a list (a one-output entry is stored as its string)."""
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


class GenerationCache:
    """Content key -> outputs of one generator (captioner or editor), backed by an append-only JSONL file.

    ``entries`` maps a content key to what the file holds: the caption string for a
    one-output caption (the format every zscir cache has), else the list of outputs.
    :meth:`outputs` always gives a list; :meth:`get` the first output.
    """

    def __init__(self, path: str | os.PathLike, identity: str, kind: str = "caption", about: dict | None = None):
        if kind not in DECLARATION_FIELD:
            raise ZscirError(f"generation cache kind {kind!r}: expected one of {', '.join(DECLARATION_FIELD)}")
        self.path, self.identity, self.key, self.kind = Path(path), identity, captioner_key(identity), kind
        self.entries: dict[str, str | list[str]] = {}
        self.dropped_lines = 0
        create_cache_file(self.path)
        self._file = open(self.path, "a+b")
        with self._locked():
            declared = self._load_and_repair()
            if not declared:
                record = {DECLARATION_FIELD[kind]: identity, "c": self.key}
                self._write([{**record, "about": about} if about else record])

    @contextmanager
    def _locked(self):
        # Several jobs (or ranks) may share one cache file; a lock keeps each batch's lines whole.
        with file_lock(self._file):
            yield

    def _load_and_repair(self) -> bool:
        declared, good_end = False, 0
        self._file.seek(0)
        for line in self._file:
            if not line.endswith(b"\n"):
                break  # the tail of a write cut short by a kill
            good_end += len(line)
            try:
                record = json.loads(line)
            except ValueError:
                self.dropped_lines += 1
                continue
            if not isinstance(record, dict) or record.get("c") != self.key:
                continue
            if "h" in record:
                self.entries[record["h"]] = record["outputs"] if "outputs" in record else record["caption"]
            elif record.get(DECLARATION_FIELD[self.kind]) == self.identity:
                declared = True
        size = self._file.seek(0, os.SEEK_END)
        if size > good_end:
            self._file.truncate(good_end)
            self.dropped_lines += 1
        return declared

    def reload(self) -> None:
        """Read what other processes appended since this one opened the file."""
        with self._locked():
            self._load_and_repair()

    def _write(self, records: list[dict]) -> None:
        data = b"".join(json_line(r) for r in records)
        try:
            self._file.seek(0, os.SEEK_END)
            self._file.write(data)  # one write per batch: a kill leaves whole lines plus at most one partial
            testpoint("caption_cache.write")  # tests: a kill while a batch is written (zscir.utils.testpoint)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:  # a full disk: name the cache file (a file object's error names none)
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def add_many(self, rows: Sequence[tuple], inputs: Sequence[dict] | None = None) -> None:
        """Append (content_key, id, outputs) rows and make them durable before returning.

        ``outputs`` is a caption string (one output) or a list of strings; ``inputs``, when
        given, is recorded beside each row (an edit's caption and instruction).
        """
        if not rows:
            return
        records = []
        for n, (h, item_id, value) in enumerate(rows):
            record = {"h": h, "c": self.key, "id": item_id}
            if isinstance(value, str):
                record["caption"] = value
            else:
                record["outputs"] = list(value)
            if inputs is not None:
                record["input"] = inputs[n]
            records.append(record)
        with self._locked():
            self._write(records)
        for h, _, value in rows:
            self.entries[h] = value if isinstance(value, str) else list(value)

    def outputs(self, content_key: str) -> list[str] | None:
        return outputs_of(self.entries.get(content_key))

    def get(self, content_key: str) -> str | None:
        value = self.entries.get(content_key)
        return value if value is None or isinstance(value, str) else (value[0] if value else None)

    def __contains__(self, content_key: str) -> bool:
        return content_key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The caption cache is the generation cache for captions (the name every caller knows).
CaptionCache = GenerationCache
