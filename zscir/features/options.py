"""How a feature store update encodes images: one object instead of a dozen loose arguments
(as :class:`zscir.evaluation.run.EvalRequest` is for evaluation)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class EncodeOptions:
    """What :meth:`zscir.features.FeatureStore.update` and :func:`zscir.features.encode.encode_sources` do.

    ``with_tokens``: also cache the final block's tokens; ``batch_size``: images per forward;
    ``shard_size``: images per feature shard (what a killed run keeps); ``flush_seconds``: a shard is
    also written after this long; ``workers``: decoding processes (None: one per core; 0: in this
    process); ``progress``: progress bars; ``prune``: drop the rows of images not in this update
    (False: keep them, a store shared by several image sets); ``force``: forget what the store holds
    and encode everything; ``precision``: fp32, or bf16/fp16 autocast (a store holds one precision);
    ``draft``: decode JPEGs at the smallest DCT scale that still covers the model's input.
    """

    with_tokens: bool = False
    batch_size: int = 64
    shard_size: int = 2048
    flush_seconds: float = 120.0
    workers: int | None = None
    progress: bool = True
    prune: bool = True
    force: bool = False
    precision: str = "fp32"
    draft: bool = False

    @classmethod
    def of(cls, options: "EncodeOptions | None" = None, **overrides) -> "EncodeOptions":
        """``options`` (default: the defaults above) with the fields named in ``overrides`` replaced."""
        return replace(options or cls(), **overrides)
