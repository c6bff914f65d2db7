"""Cached image features shared by pretraining, evaluation and indexing.

    from zscir.features import FeatureStore, EncodeOptions
    store = FeatureStore.for_backbone(cache_root, bb)      # or FeatureStore(dir)
    report = store.update(bb, items, EncodeOptions(with_tokens=False))  # items: (id, path) pairs, paths or ImageItems
    ids, pooled, tokens = store.load()                    # pooled: fp16 memmap [N, D]; tokens: RowView | None

Several processes (torchrun / accelerate launch): :func:`zscir.features.distributed.update_store`.
"""

from zscir.features.options import EncodeOptions
from zscir.features.shards import RowView
from zscir.features.sources import KeyedImage, as_source, as_sources, file_key
from zscir.features.store import FORMAT_VERSION, Features, FeatureStore, UpdateReport, backbone_fingerprint

__all__ = ["FeatureStore", "Features", "UpdateReport", "EncodeOptions", "RowView", "KeyedImage", "as_source",
           "as_sources", "file_key", "backbone_fingerprint", "FORMAT_VERSION"]
