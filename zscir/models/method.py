"""The record of one pseudo-word method (:class:`Method`) and of how zscir trains it (:class:`Training`).

Each method's module holds its own record beside the network it uses (``zscir.models.fti:METHOD``);
:data:`zscir.models.methods.METHODS` names them by import path. Adding a method (or training for one)
means adding a record and an entry, never a branch on its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from zscir.models.objective import LossWeights
from zscir.utils.registry import load_entry

DATA_KINDS = ("images", "captions")


@dataclass(frozen=True)
class Training:
    """How ``zscir pretrain --method NAME`` trains a method.

    objective:      (network, backbone, batch, LossWeights, gather) -> (loss, terms) (:mod:`zscir.models.objective`)
    network_config: the default config name in ``zscir/models/configs``
    data:           "images" (cached image features + split captions) or "captions" (caption text only)
    weights:        the loss weights and temperature unless the run sets them
    preparation:    import path of (cfg, data, backbone, world, cache_root, accelerator, log) -> the data with the
                    method's own per-item fields (:class:`zscir.training.pretrain_data.ExtendedSet`), in the
                    training layer; None: the data as built
    options:        the :class:`zscir.training.pretrain.PretrainConfig` fields only this method reads
    """

    objective: Callable
    network_config: str
    data: str
    weights: LossWeights = field(default_factory=LossWeights)
    preparation: str | None = None
    options: tuple[str, ...] = ()

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"training data {self.data!r} is not one of {DATA_KINDS}")

    @property
    def prepare(self) -> Callable | None:
        """The training-data preparation named by :attr:`preparation` (imported on use), or None."""
        return None if self.preparation is None else load_entry(self.preparation)


@dataclass(frozen=True)
class Method:
    name: str
    network: type[nn.Module]
    compose: Callable            # (backbone, network, ImageFeatures, texts) -> [B, D] unnormalised query features
    query_prompt: str            # the prompt as recorded ("*" the pseudo-word slot)
    fiq_captions: str            # FashionIQ caption rule (zscir.evaluation.protocol.FIQ_RULES)
    preprocess: str = "targetpad"
    needs_tokens: bool = False
    title: str = ""
    training: Training | None = None   # None: importable and evaluable, not trainable by zscir
    pseudo_words: bool = True          # the network gives pseudo-words (zscir explain); False: a composer (SCOT)
