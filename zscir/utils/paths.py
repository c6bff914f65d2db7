"""Where zscir keeps what it builds on first use (default world, cached indexes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ZSCIR_CACHE`` if set, else ``$XDG_CACHE_HOME/zscir`` or ``~/.cache/zscir``."""
    if os.environ.get("ZSCIR_CACHE"):
        return Path(os.environ["ZSCIR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zscir"


def repo_checkpoints_dir() -> Path:
    """The ``checkpoints/`` folder shipped beside the package (source checkout)."""
    return Path(__file__).resolve().parents[2] / "checkpoints"
