"""Search your own images with composed queries: a faiss index over cached features, a retriever, an HTML report.

    from zscir.index import build_index
    from zscir.resolve import load_retriever   # picks the model and backbone for an index (zscir.resolve)
    build_index("my_index", backbone, images="photos/")
    hits = load_retriever("my_index", "checkpoints/shapes_fti.safetensors").search("ref.jpg", "in red", k=10)

Names are imported on first use so that `zscir retrieve --help` and input errors stay fast.
"""

import importlib

_EXPORTS = {"GalleryIndex": "zscir.index.gallery", "build_index": "zscir.index.gallery",
            "Retriever": "zscir.index.retriever", "Hit": "zscir.index.retriever",
            "QueryResult": "zscir.index.retriever"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'zscir.index' has no attribute {name!r}")
