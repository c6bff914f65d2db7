"""Unlabeled image sources behind one interface, chosen from what the user passes to ``--images``.

- a folder tree of images (jpg, jpeg, png, webp, bmp; recursive) -> id = path relative to the folder;
- a text file listing image paths, one per line -> id = the path as written;
- webdataset tar shards in img2dataset's layout (``00000.tar`` holding
  ``key.jpg``, ``key.txt``, ``key.json``), given as a path, a brace pattern
  (``cc3m/{00000..00331}.tar``), a glob, or a folder of shards -> id = the sample key.

Every source yields :class:`ImageItem` objects in a stable order. Decoding is
lazy (``item.load()``) so that callers that only need ids or captions never pay
for it, and a bad file raises :class:`BadImageError` for that item only. Problems
that are not one image (a missing or corrupt shard, a sample without an image)
are recorded in ``source.skipped``; callers record decode failures there too
(``source.load_or_skip(item)``), so one report lists everything at the end.
"""

from __future__ import annotations

import glob
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

from PIL import Image

from zscir.data.images import DEFAULT_MAX_PIXELS, BadImageError, SkipReport, decode_image
from zscir.errors import ZscirError
from zscir.utils.hashing import sha256_bytes

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class ImageItem:
    """One image of a source: a stable id, lazily read bytes, and side data (webdataset members)."""

    __slots__ = ("id", "_reader", "_data", "_hash", "extras", "max_pixels")

    def __init__(self, item_id: str, reader: Callable[[], bytes] | None = None, data: bytes | None = None,
                 extras: dict[str, bytes] | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.id = item_id
        self._reader, self._data, self._hash = reader, data, None
        self.extras = extras or {}
        self.max_pixels = max_pixels

    def read_bytes(self) -> bytes:
        if self._data is None:
            try:
                self._data = self._reader()
            except FileNotFoundError:
                raise BadImageError(self.id, "missing file") from None
            except OSError as e:
                raise BadImageError(self.id, "unreadable file", str(e)) from None
        return self._data

    @property
    def content_hash(self) -> str:
        """sha256 of the encoded bytes: the same picture under two names is one cache entry."""
        if self._hash is None:
            self._hash = sha256_bytes(self.read_bytes())
        return self._hash

    def load(self) -> Image.Image:
        """The image as 8-bit RGB; raises :class:`BadImageError` when it cannot be used."""
        return decode_image(self.read_bytes(), self.id, self.max_pixels)

    def release(self) -> None:
        """Drop the cached bytes (the hash stays) once the image has been used."""
        self._data = None if self._reader is not None else self._data

    def __repr__(self) -> str:
        return f"ImageItem({self.id!r})"


class ImageSource:
    """Iterable of :class:`ImageItem`; ``skipped`` collects what could not be used."""

    kind = "?"

    def __init__(self, spec: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.spec, self.max_pixels = spec, max_pixels
        self.skipped = SkipReport()

    def __iter__(self) -> Iterator[ImageItem]:
        raise NotImplementedError

    def estimated_len(self) -> int | None:
        """Number of items when known cheaply (for progress bars), else None."""
        return None

    def load_or_skip(self, item: ImageItem) -> Image.Image | None:
        try:
            return item.load()
        except BadImageError as e:
            self.skipped.record(e)
            return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def _has_image_extension(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


class FolderSource(ImageSource):
    kind = "folder"

    def __init__(self, root: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(root, max_pixels)
        self.root = Path(root)
        self._files = self._list_files()

    def _list_files(self) -> list[str]:
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(self.root)
            found += [(rel_dir / name).as_posix() for name in sorted(filenames) if _has_image_extension(name)]
        return found

    def estimated_len(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[ImageItem]:
        for rel in self._files:
            path = self.root / rel
            yield ImageItem(rel, reader=path.read_bytes, max_pixels=self.max_pixels)


class ListFileSource(ImageSource):
    """Paths one per line; blank lines and ``#`` comments ignored; relative paths are relative to the list."""

    kind = "list"

    def __init__(self, list_path: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(list_path, max_pixels)
        base = Path(list_path).parent
        try:
            lines = Path(list_path).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ZscirError(f"--images {list_path}: expected a UTF-8 text file listing image paths, "
                             "got binary data (is it an image or an archive?)") from None
        self._entries = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                path = Path(line)
                self._entries.append((line, path if path.is_absolute() else base / path))

    def estimated_len(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[ImageItem]:
        for item_id, path in self._entries:
            yield ImageItem(item_id, reader=path.read_bytes, max_pixels=self.max_pixels)


class TarShardSource(ImageSource):
    """Webdataset shards read sequentially (streaming), one sample per key.

    A sample's members share a key: the member path up to the first dot of its
    file name (``dir/000123.jpg`` -> key ``dir/000123``, extension ``jpg``).
    Non-image members (``txt``, ``json``) are kept in ``item.extras``.
    """

    kind = "tar"

    def __init__(self, shards: list[str], spec: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(spec, max_pixels)
        self.shards = shards

    def estimated_len(self) -> int | None:
        # img2dataset writes NNNNN_stats.json next to each shard with its success count.
        total = 0
        for shard in self.shards:
            stats = _shard_stem(shard) + "_stats.json"
            try:
                total += int(json.loads(Path(stats).read_text())["successes"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return total

    def __iter__(self) -> Iterator[ImageItem]:
        for shard in self.shards:
            yield from self._iter_shard(shard)

    def _iter_shard(self, shard: str) -> Iterator[ImageItem]:
        if not os.path.exists(shard):
            self.skipped.add(shard, "missing shard")
            return
        key, members, count = None, {}, 0
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    member_key, ext = _split_key(member.name)
                    if member_key != key:
                        if key is not None:
                            count += 1
                            yield from self._make_item(key, members)
                        key, members = member_key, {}
                    members[ext] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            self.skipped.add(shard, f"corrupt shard (stopped after {count} samples: {e})")
            return
        if key is not None:
            yield from self._make_item(key, members)

    def _make_item(self, key: str, members: dict[str, bytes]) -> Iterator[ImageItem]:
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
        if image_ext is None:
            self.skipped.add(key, "no image member in sample")
            return
        data = members.pop(image_ext)
        yield ImageItem(key, data=data, extras=members, max_pixels=self.max_pixels)


def _split_key(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def _shard_stem(shard: str) -> str:
    for suffix in TAR_SUFFIXES:
        if shard.endswith(suffix):
            return shard[: -len(suffix)]
    return shard


# --- brace patterns ----------------------------------------------------------------------------

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Expand shell-style braces: ``{00000..00003}`` (zero padding kept) and ``{a,b}``; nestable."""
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth = 0
    for end in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[end], 0)
        if depth == 0:
            break
    else:
        raise ZscirError(f"--images {pattern}: unbalanced '{{' in brace pattern")
    body, head, tail = pattern[start + 1:end], pattern[:start], pattern[end + 1:]
    match = _RANGE.match(body)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(i).zfill(width) for i in range(int(lo), int(hi) + step, step)]
    else:
        choices = _split_top_level(body)
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _split_top_level(body: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        current += ch
    return parts + [current]


# --- choosing a source from --images -----------------------------------------------------------

def _expand_paths(spec: str) -> list[str]:
    paths = []
    for expanded in expand_braces(spec):
        if any(ch in expanded for ch in "*?["):
            paths += sorted(glob.glob(expanded))
        else:
            paths.append(expanded)
    return paths


def _is_tar_spec(spec: str) -> bool:
    paths = _expand_paths(spec)
    return bool(paths) and all(p.endswith(TAR_SUFFIXES) for p in paths)


def _is_shard_folder(spec: str) -> bool:
    """A folder whose top level holds tar shards and no images (e.g. an img2dataset output dir)."""
    if not os.path.isdir(spec):
        return False
    names = os.listdir(spec)
    return any(n.endswith(TAR_SUFFIXES) for n in names) and not any(_has_image_extension(n) for n in names)


def _open_tar(spec: str, max_pixels: int) -> TarShardSource:
    if os.path.isdir(spec):
        shards = sorted(str(Path(spec) / n) for n in os.listdir(spec) if n.endswith(TAR_SUFFIXES))
    else:
        shards = _expand_paths(spec)
    if not any(os.path.exists(s) for s in shards):
        raise ZscirError(f"--images {spec}: none of the {len(shards)} tar shard(s) it names exist")
    return TarShardSource(shards, spec, max_pixels)


def _is_list_file(spec: str) -> bool:
    return os.path.isfile(spec) and not _has_image_extension(spec) and not spec.endswith(TAR_SUFFIXES)


# kind -> (does this spec look like it?, build it). Tried in order; "kind:path" forces a kind.
SOURCE_KINDS: dict[str, tuple[Callable[[str], bool], Callable[[str, int], ImageSource]]] = {
    "tar": (lambda s: _is_tar_spec(s) or _is_shard_folder(s), _open_tar),
    "folder": (os.path.isdir, lambda s, m: FolderSource(s, m)),
    "list": (_is_list_file, lambda s, m: ListFileSource(s, m)),
}


def open_image_source(spec: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSource:
    """The image source named by ``spec`` (a folder, a list file, tar shards, or ``kind:path``)."""
    spec = str(spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind in SOURCE_KINDS:
        return SOURCE_KINDS[kind][1](rest, max_pixels)
    for matches, build in SOURCE_KINDS.values():
        if matches(spec):
            return build(spec, max_pixels)
    problem = ("it is a single image file; put it in a folder or a list file" if os.path.exists(spec)
               else "no such file or folder")
    raise ZscirError(f"--images {spec}: expected a folder of images, a text file listing image paths, "
                     f"or webdataset tar shards (e.g. 'shards/{{00000..00009}}.tar'); {problem}")
