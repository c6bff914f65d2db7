"""The one image input: what the user passes to ``--images`` (``zscir index``, ``pretrain``, ``caption``).

- a folder tree of images (recursive) -> id = path relative to the folder (POSIX, bytes-safe);
- a text file listing image paths, one per line -> id = the path as written;
- webdataset tar shards in img2dataset's layout (:mod:`zscir.data.webdataset`), given as a path,
  a brace pattern (``cc3m/{00000..00331}.tar``), a glob, or a folder of shards -> id = the sample key.

Which files of a folder are images is one rule (:mod:`zscir.data.items`): the extensions of
``IMAGE_EXTENSIONS`` in any case; dotfiles and hidden folders are skipped; symlinks to files are
listed, symlinked folders are not followed. A folder's images come sorted by id.
Ids and keys follow :mod:`zscir.data.keys`.

Every source yields :class:`ImageItem` objects in a stable order. Decoding is
lazy (``item.load()``) so that callers that only need ids or captions never pay
for it, and a bad file raises :class:`BadImageError` for that item only. Problems
that are not one image (a missing or corrupt shard, a sample without an image)
are recorded in ``source.skipped``; callers record decode failures there too
(``source.load_or_skip(item)``), so one report lists everything at the end.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Callable, Iterator

from zscir.data.braces import expand_braces
from zscir.data.images import DEFAULT_MAX_PIXELS
from zscir.data.items import (IMAGE_EXTENSIONS, IMAGES_RULE, ImageItem, ImageSource, has_image_extension, is_hidden,
                              is_image_name)
from zscir.data.keys import safe_name
from zscir.data.webdataset import TAR_SUFFIXES, TarShardSource
from zscir.errors import ZscirError

__all__ = ["IMAGE_EXTENSIONS", "IMAGES_RULE", "ImageItem", "ImageSource", "FolderSource", "ListFileSource",
           "TarShardSource", "images_in_folder", "open_image_source", "expand_braces", "SOURCE_KINDS"]


def images_in_folder(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """(id, path) for every image file under ``folder`` (the rule above), sorted by id."""
    root = Path(folder)
    if not root.is_dir():
        raise ZscirError(f"image folder {safe_name(str(root))!r} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for name in filenames:
            if is_image_name(name):
                p = Path(dirpath) / name
                found.append((safe_name(p.relative_to(root).as_posix()), p))
    found.sort()
    return found


class FolderSource(ImageSource):
    kind = "folder"

    def __init__(self, root: str, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(root, max_pixels)
        self.root = Path(root)
        self._files = images_in_folder(self.root)

    def files(self) -> list[tuple[str, Path]]:
        """(id, path) of every image, in order: what the feature store takes for files."""
        return list(self._files)

    def estimated_len(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[ImageItem]:
        for item_id, path in self._files:
            yield ImageItem(item_id, reader=path.read_bytes, max_pixels=self.max_pixels)


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


def is_shard_folder(spec: str) -> bool:
    """A folder whose top level holds tar shards and no images (e.g. an img2dataset output dir)."""
    if not os.path.isdir(spec):
        return False
    names = os.listdir(spec)
    return any(n.endswith(TAR_SUFFIXES) for n in names) and not any(is_image_name(n) for n in names)


_is_shard_folder = is_shard_folder  # the name zscir index used


def _open_tar(spec: str, max_pixels: int) -> TarShardSource:
    if os.path.isdir(spec):
        shards = sorted(str(Path(spec) / n) for n in os.listdir(spec) if n.endswith(TAR_SUFFIXES))
    else:
        shards = _expand_paths(spec)
    if not any(os.path.exists(s) for s in shards):
        raise ZscirError(f"--images {spec}: none of the {len(shards)} tar shard(s) it names exist")
    return TarShardSource(shards, spec, max_pixels)


def _is_list_file(spec: str) -> bool:
    return os.path.isfile(spec) and not has_image_extension(spec) and not spec.endswith(TAR_SUFFIXES)


# kind -> (does this spec look like it?, build it). Tried in order; "kind:path" forces a kind.
SOURCE_KINDS: dict[str, tuple[Callable[[str], bool], Callable[[str, int], ImageSource]]] = {
    "tar": (lambda s: _is_tar_spec(s) or is_shard_folder(s), _open_tar),
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
