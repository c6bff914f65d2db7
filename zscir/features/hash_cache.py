"""The hash cache of a feature store (``hashes.json``): file stat key -> content key.

An image's key is its content hash, which costs a read of every byte; the cache lets an
update over unchanged files cost one stat each. It is only a cache: a damaged one is
dropped, never reported. Stores written before content keys hold stat keys in their rows;
:func:`legacy_stat_keys` keeps such a row while its file is unchanged.
"""

from __future__ import annotations

import json
from typing import Iterable

from zscir.errors import ZscirError
from zscir.features.manifest import StoreFiles
from zscir.features.sources import KeyedImage
from zscir.utils.atomic import atomic_write_json

HASHES_FILE = "hashes.json"
HASHES_FORMAT = "zscir-hashes"


def read_hashes(files: StoreFiles) -> dict[str, str]:
    """The stat key -> content key cache; a damaged cache is only a cache: start again."""
    try:
        data = json.loads((files.root / HASHES_FILE).read_text(encoding="utf-8"))
        if data.get("format") == HASHES_FORMAT and isinstance(data.get("hashes"), dict):
            return data["hashes"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def write_hashes(files: StoreFiles, sources: Iterable[KeyedImage], keep: dict[str, str]) -> None:
    """Remember each file's content key by its stat key (for the next update), when that changed."""
    hashes = dict(keep)
    hashes.update({s.stat: s.key for s in sources if s.stat and s.key.startswith("sha256:")})
    if hashes != read_hashes(files):
        atomic_write_json(files.root / HASHES_FILE, {"format": HASHES_FORMAT, "hashes": hashes}, indent=None)


def legacy_stat_keys(files: StoreFiles) -> dict[str, str]:
    """Rows of stores written before content keys are keyed by stat key: an unchanged file keeps
    its row without being read (``{stat: stat}``; a moved or touched one is hashed and re-encoded once)."""
    try:
        with files.missing_is_damage():
            live = files.live_rows(files.read_manifest()) if files.exists() else []
    except ZscirError:
        return {}  # damage is reported under the lock, with what fixes it
    return {k: k for _, _, _, k in live if k.startswith("file:")}
