"""The frozen CLIP backbone layer over open_clip.

Its names are imported on first use (PEP 562), so that importing a submodule that needs
no model, such as the ``zscir backbone`` command for its ``--help``, loads neither torch
nor open_clip. The first use also registers zscir's model configs with open_clip.
"""

import importlib

_EXPORTS = {
    "PLACEHOLDER": "zscir.backbone.clip", "Backbone": "zscir.backbone.clip", "ImageFeatures": "zscir.backbone.clip",
    "load_backbone": "zscir.backbone.loading", "register_model_configs": "zscir.backbone.loading",
    "resolve_identity": "zscir.backbone.loading",
    "Preprocess": "zscir.backbone.preprocess", "make_preprocess": "zscir.backbone.preprocess",
    "target_pad": "zscir.backbone.preprocess",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module("zscir.backbone.loading").register_model_configs()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
