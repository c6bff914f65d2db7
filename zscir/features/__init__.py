"""Cached image features shared by pretraining, evaluation and indexing.

    from zscir.features import FeatureStore
    store = FeatureStore.for_backbone(cache_root, bb)      # or FeatureStore(dir)
    report = store.update(bb, items, with_tokens=False)   # items: (id, path) pairs, paths or ImageItems
    ids, pooled, tokens = store.load()                    # pooled: fp16 memmap [N, D]; tokens: RowView | None
"""

from zscir.features.shards import RowView
from zscir.features.sources import ImageSource, as_source, as_sources, file_key, images_in_folder
from zscir.features.store import FORMAT_VERSION, Features, FeatureStore, UpdateReport, backbone_fingerprint

__all__ = ["FeatureStore", "Features", "UpdateReport", "RowView", "ImageSource", "as_source", "as_sources",
           "file_key", "images_in_folder", "backbone_fingerprint", "FORMAT_VERSION"]
