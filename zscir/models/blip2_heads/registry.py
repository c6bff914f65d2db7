"""The BLIP-2 heads by name and their recipes (see the package doc)."""


from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zscir.errors import ZscirError
from zscir.models.blip2_heads.fashionblip2 import FashionBlip2
from zscir.models.blip2_heads.finecir import FineCIRBlip2

BLIP2_HEADS: dict[str, type] = {"finecir": FineCIRBlip2, "fashionblip2": FashionBlip2}
RECIPE_DIR = Path(__file__).parent / "recipes"


def recipe(head: str) -> dict[str, Any]:
    """The head's recipe (see the module doc)."""
    if head not in BLIP2_HEADS:
        raise ZscirError(f"unknown BLIP-2 head {head!r}: expected one of {', '.join(BLIP2_HEADS)}")
    return json.loads((RECIPE_DIR / f"{head}.json").read_text())


def blip2_head_config(head: str, overrides: dict | None = None) -> dict[str, Any]:
    """{"head": head, **the recipe's head_options}, with ``overrides`` (None values ignored) checked by name."""
    cfg = {"head": head, **recipe(head)["head_options"]}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in cfg:
            raise ZscirError(f"unknown option {k!r} for the {head} head: expected one of "
                             f"{', '.join(c for c in cfg if c != 'head')}")
        cfg[k] = v
    return cfg


def create_blip2_head(config: dict[str, Any], model, tokenizer, parser=None):
    cfg = dict(config)
    return BLIP2_HEADS[cfg.pop("head")](model, tokenizer, parser, **cfg)
