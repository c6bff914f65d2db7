"""Search your own images with composed queries: a faiss index over cached features, a retriever, an HTML report.

    from zscir.index import build_index, Retriever
    build_index("my_index", backbone, images="photos/")
    hits = Retriever.load("my_index", "checkpoints/shapes_fti.safetensors").search("ref.jpg", "in red", k=10)
"""

from zscir.index.gallery import GalleryIndex, build_index
from zscir.index.retriever import Hit, QueryResult, Retriever

__all__ = ["GalleryIndex", "build_index", "Retriever", "Hit", "QueryResult"]
