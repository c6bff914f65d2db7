"""Webdataset tar shards in img2dataset's layout (``00000.tar`` holding ``key.jpg``, ``key.txt``,
``key.json``), read sequentially (streaming), one :class:`~zscir.data.items.ImageItem` per sample."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from zscir.data.images import DEFAULT_MAX_PIXELS
from zscir.data.items import IMAGE_EXTENSIONS, ImageItem, ImageSource

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class TarShardSource(ImageSource):
    """Webdataset shards read sequentially (streaming), one sample per key.

    A sample's members share a key: the member path up to the first dot of its
    file name (``dir/000123.jpg`` -> key ``dir/000123``, extension ``jpg``).
    Its image is the first member whose extension is in ``IMAGE_EXTENSIONS`` (in that order);
    the other members (``txt``, ``json``) are kept in ``item.extras``.
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
