"""Caption a whole image source once, resumably.

Captions are cached in an append-only JSONL file keyed by the image's content
hash and the captioner's identity, so that:
- a run killed at image 2,000,001 restarts at image 2,000,001 (every finished
  batch is flushed and fsynced before the next one starts; a line cut in half
  by the kill is dropped on the next open);
- the same picture under two names, or in two datasets, is captioned once;
- a different model or different generation settings never reuse old captions.

File format, one JSON object per line:
  {"zscir": "caption-cache", "format_version": 1}               header: the file is zscir's
  {"captioner": "<full identity>", "c": "<16-hex key>"}         declares a captioner
  {"h": "<sha256 of image bytes>", "c": "<key>", "id": "...", "caption": "..."}

zscir only appends to a file it created: a new cache is created with the header
(exclusively, so two jobs starting together agree on one file); an existing file
must start with the header, or, for caches written before the header existed,
with a captioner declaration (``captioner`` and a 16-hex ``c`` and nothing else,
which every such cache starts with). Anything else (a notes file, a JPEG) is
refused before it is touched. Ids that are not valid UTF-8 (file names in
another encoding arrive as surrogate escapes) are written as JSON ``\\udcXX``
escapes, so every line stays UTF-8 and reads back to the same id.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from zscir.data.captioners import Captioner
from zscir.data.images import BadImageError, SkipReport
from zscir.data.sources import ImageItem, ImageSource
from zscir.errors import ZscirError
from zscir.utils.atomic import _umask
from zscir.utils.hashing import sha256_bytes
from zscir.utils.locks import file_lock
from zscir.utils.paths import cache_dir
from zscir.utils.testpoint import testpoint


def captioner_key(identity: str) -> str:
    return sha256_bytes(identity.encode("utf-8"))[:16]


def default_cache_path(identity: str) -> Path:
    """One cache file per captioner identity under the zscir cache dir."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", identity.split("|")[0])[:60]
    return cache_dir() / "captions" / f"{slug}-{captioner_key(identity)}.jsonl"


HEADER = {"zscir": "caption-cache", "format_version": 1}
_KEY = re.compile(r"[0-9a-f]{16}")


def json_line(record: dict) -> bytes:
    """One UTF-8 JSON line; text that is not valid Unicode (surrogate-escaped file names) is written as escapes."""
    try:
        return json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(record).encode("ascii") + b"\n"


def check_cache_file(path: str | os.PathLike) -> None:
    """Refuse a file zscir did not create as a caption cache (a missing or empty file is fine)."""
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
    """Create ``path`` holding only the header, unless it exists (then it must be a zscir cache)."""
    check_cache_file(path)
    if path.exists() and path.stat().st_size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json_line(HEADER))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if path.exists():  # an empty file (created by hand): replace it by the header
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # exclusive: of two jobs starting together, one creates the file
            except FileExistsError:
                check_cache_file(path)
            except OSError:  # a file system without hard links: create exclusively and write in place
                try:
                    with open(path, "xb") as f:
                        f.write(json_line(HEADER))
                except FileExistsError:
                    check_cache_file(path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class CaptionCache:
    """Content hash -> caption for one captioner, backed by an append-only JSONL file."""

    def __init__(self, path: str | os.PathLike, identity: str):
        self.path, self.identity, self.key = Path(path), identity, captioner_key(identity)
        self.entries: dict[str, str] = {}
        self.dropped_lines = 0
        create_cache_file(self.path)
        self._file = open(self.path, "a+b")
        with self._locked():
            declared = self._load_and_repair()
            if not declared:
                self._write([{"captioner": identity, "c": self.key}])

    @contextmanager
    def _locked(self):
        # Two jobs may share one cache file; a lock keeps each batch's lines whole.
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
                self.entries[record["h"]] = record["caption"]
            elif record.get("captioner") == self.identity:
                declared = True
        size = self._file.seek(0, os.SEEK_END)
        if size > good_end:
            self._file.truncate(good_end)
            self.dropped_lines += 1
        return declared

    def _write(self, records: list[dict]) -> None:
        data = b"".join(json_line(r) for r in records)
        self._file.seek(0, os.SEEK_END)
        self._file.write(data)  # one write per batch: a kill leaves whole lines plus at most one partial
        testpoint("caption_cache.write")  # tests: a kill while a batch is written (zscir.utils.testpoint)
        self._file.flush()
        os.fsync(self._file.fileno())

    def add_many(self, rows: list[tuple[str, str, str]]) -> None:
        """Append (content_hash, id, caption) rows and make them durable before returning."""
        if not rows:
            return
        with self._locked():
            self._write([{"h": h, "c": self.key, "id": i, "caption": c} for h, i, c in rows])
        for h, _, c in rows:
            self.entries[h] = c

    def get(self, content_hash: str) -> str | None:
        return self.entries.get(content_hash)

    def __contains__(self, content_hash: str) -> bool:
        return content_hash in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CaptionResult(dict):
    """id -> caption in source order, plus what happened on the way."""

    def __init__(self):
        super().__init__()
        self.from_cache = 0          # images whose caption was already in the cache
        self.captioned = 0           # images captioned in this run
        self.skipped = SkipReport()  # the source's report: bad files, missing shards, no caption
        self.cache_path: Path | None = None
        self.identity = ""

    def summary(self) -> dict:
        return {"images": len(self), "captioned_now": self.captioned, "from_cache": self.from_cache,
                "captioner": self.identity, "cache": str(self.cache_path) if self.cache_path else None,
                **self.skipped.to_dict()}


# A captioner that fails on this many images in a row is broken, not fed bad images.
MAX_CONSECUTIVE_FAILURES = 64


def caption_images(source: ImageSource, captioner: Captioner, cache_path: str | os.PathLike | None = None,
                   batch_size: int = 16, progress: bool = True) -> CaptionResult:
    """Caption every image of ``source`` (resumable through the cache); returns id -> caption.

    Skipped items (undecodable, duplicate ids, no caption) are listed in
    ``result.skipped`` (the same object as ``source.skipped``).
    """
    if batch_size < 1:
        raise ZscirError(f"--batch-size {batch_size}: expected a positive integer")
    run = _CaptionRun(source, captioner, batch_size)
    result = run.result
    result.identity = captioner.identity
    bar = tqdm(total=source.estimated_len(), unit="img", desc=f"caption [{captioner.name}]",
               disable=not progress, dynamic_ncols=True)
    cache = None
    if captioner.cacheable:
        result.cache_path = Path(cache_path) if cache_path else default_cache_path(captioner.identity)
        cache = CaptionCache(result.cache_path, captioner.identity)
    try:
        for item in source:
            run.add(item, cache)
            bar.update(1)
            if bar.n % 256 == 0:
                bar.set_postfix(cached=result.from_cache, new=result.captioned, skipped=len(result.skipped))
        run.flush(cache)
    finally:
        bar.close()
        if cache is not None:
            cache.close()
    return run.ordered()


class _CaptionRun:
    """The state of one pass: the pending batch, the order of ids, the counts."""

    def __init__(self, source: ImageSource, captioner: Captioner, batch_size: int):
        self.source, self.captioner, self.batch_size = source, captioner, batch_size
        self.result = CaptionResult()
        self.result.skipped = source.skipped
        self.order: list[str] = []
        self.seen: set[str] = set()
        self.pending: list[tuple[ImageItem, object]] = []   # (item, decoded image or None)
        self.pending_hash: dict[str, list[str]] = {}      # content hash -> ids waiting for it
        self.consecutive_failures = 0

    def add(self, item: ImageItem, cache: CaptionCache | None) -> None:
        if item.id in self.seen:
            self.source.skipped.add(item.id + " (again)", "duplicate id")
            return
        self.seen.add(item.id)
        self.order.append(item.id)
        if cache is None:  # a lookup: no hashing, no decoding
            self.pending.append((item, None))
        else:
            try:
                content_hash = item.content_hash
            except BadImageError as e:
                self.source.skipped.record(e)
                return
            cached = cache.get(content_hash)
            if cached is not None:
                self.result[item.id] = cached
                self.result.from_cache += 1
                item.release()
                return
            if content_hash in self.pending_hash:  # the same picture twice in one batch
                self.pending_hash[content_hash].append(item.id)
                return
            image = self.source.load_or_skip(item) if self.captioner.needs_images else None
            item.release()
            if image is None and self.captioner.needs_images:
                return
            self.pending_hash[content_hash] = [item.id]
            self.pending.append((item, image))
        if len(self.pending) >= self.batch_size:
            self.flush(cache)

    def flush(self, cache: CaptionCache | None) -> None:
        if not self.pending:
            return
        items = [item for item, _ in self.pending]
        images = [image for _, image in self.pending] if self.captioner.needs_images else None
        captions = self._caption_batch(items, images)
        rows = []
        for item, caption in zip(items, captions):
            ids = self.pending_hash.get(item.content_hash, [item.id]) if cache is not None else [item.id]
            if caption is None:
                for item_id in ids:
                    self.source.skipped.add(item_id, "no caption")
                continue
            for item_id in ids:
                self.result[item_id] = caption
            self.result.captioned += len(ids)
            if cache is not None:
                rows.append((item.content_hash, item.id, caption))
        if cache is not None:
            cache.add_many(rows)
        self.pending, self.pending_hash = [], {}

    def _caption_batch(self, items, images) -> list[str | None]:
        try:
            captions = self._checked(self.captioner.caption(items, images), len(items))
        except Exception as error:
            if len(items) == 1:
                return [self._failed(items[0], error)]
            # One bad image must not cost its batch: retry one by one and skip only the failures.
            return [self._caption_batch([item], None if images is None else [images[i]])[0]
                    for i, item in enumerate(items)]
        self.consecutive_failures = 0
        return captions

    def _failed(self, item: ImageItem, error: Exception) -> None:
        self.consecutive_failures += 1
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise ZscirError(f"captioner {self.captioner.identity} failed on {self.consecutive_failures} images "
                             f"in a row (last: {item.id}: {type(error).__name__}: {error})") from error
        self.source.skipped.add(item.id, f"captioner failed ({type(error).__name__})")
        return None

    def _checked(self, captions, n: int) -> list[str | None]:
        captions = list(captions)
        if len(captions) != n:
            raise ZscirError(f"captioner {self.captioner.identity} returned {len(captions)} captions for {n} images")
        return [c.strip() if isinstance(c, str) and c.strip() else None for c in captions]

    def ordered(self) -> CaptionResult:
        out = CaptionResult()
        out.__dict__.update(self.result.__dict__)
        out.update((i, self.result[i]) for i in self.order if i in self.result)
        return out
