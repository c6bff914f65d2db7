"""Backbone families: which loader builds the backbone a ``--clip`` name asks for.

A name without a registered prefix is an open_clip model (``ViT-B-32``, ``hf-hub:ORG/REPO``), built by
:func:`zscir.backbone.loading.load_backbone` itself. A name ``FAMILY:SPEC`` whose ``FAMILY`` is a key of
:data:`FAMILIES` is handed to that family's loader, named by import path (imported on first use), so
``--clip blip2:Salesforce/blip2-itm-vit-g`` reaches :func:`zscir.backbone.blip2_loading.load_family`
through the one resolver every command uses. A family's spec names its own weights: it takes no
``--pretrained``.

A family loader is called as ``load(spec, device=..., preprocess=..., precision=..., cache_dir=...)`` with
the whole name (``"blip2:..."``) and returns a backbone with the interface of
:class:`zscir.backbone.clip.Backbone` that the feature store and the baselines use (``identity``,
``preprocess``, ``encode_image``, ``encode_text``, ``image_layout``, ``feature_width``).
"""

from __future__ import annotations

from typing import Callable

from zscir.utils.registry import Entries

# prefix of a --clip name -> the family's loader
FAMILIES: Entries = Entries({
    "blip2": "zscir.backbone.blip2_loading:load_family",
})


def family_of(name: str | None) -> str | None:
    """The registered family ``name`` belongs to (``"blip2"`` for ``blip2:...``), else None (open_clip)."""
    prefix, sep, _ = str(name or "").partition(":")
    return prefix if sep and prefix in FAMILIES else None


def family_loader(name: str) -> Callable | None:
    """The loader of ``name``'s family, or None for an open_clip name."""
    family = family_of(name)
    return FAMILIES[family] if family is not None else None
