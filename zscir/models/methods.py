"""The pseudo-word methods zscir evaluates, one registry entry each.

A :class:`Method` names the mapping network that produces the pseudo-words and
how a query is composed from them: the query prompt, what the network reads
(the pooled feature, the image tokens, the prompt's text feature), the
FashionIQ caption rule and the preprocessing of its official evaluation; a
trainable method also carries its :class:`Training` facts (objective, default
network config, data). The query encoder (:mod:`zscir.models.query`) and the network factory
(:mod:`zscir.models.factory`) read this table; adding a method (or training
for one) means adding an entry, never a branch on its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from zscir.models import combiner, objective, prompts, searle
from zscir.models.context_i2w import ContextI2WNetwork
from zscir.models.fti import FTINetwork, SingleTokenNetwork
from zscir.models.objective import LossWeights
from zscir.models.pic2word import Pic2WordNetwork


def compose_fti(backbone, network, ref, texts) -> torch.Tensor:
    pw = network(ref.pooled, ref.tokens)
    return backbone.encode_prompts([prompts.query_prompt(r, t) for r, t in zip(pw.counts.tolist(), texts)],
                                   prompts.interleave(pw.subject, pw.attributes, pw.counts))


def single_token(prompt: Callable[[str], str], also_fills: str | None = None) -> Callable:
    """Compose with one pseudo-word from the pooled feature, in ``prompt(text)``.

    ``also_fills``: a character of the text that the pseudo-word fills too, as LinCIR replaces every
    ``$`` token (a caption's own ``$`` included), where SEARLE replaces only the template's.
    """
    def compose(backbone, network, ref, texts) -> torch.Tensor:
        subject = network(ref.pooled, ref.tokens).subject
        if also_fills is None:
            return backbone.encode_prompts([prompt(t) for t in texts], subject)
        texts_ = [prompt(t).replace(also_fills, prompts.PLACEHOLDER) for t in texts]
        slots = (backbone.tokenize(texts_) == backbone.placeholder_token_id).sum(dim=1)
        return backbone.encode_prompts(texts_, subject.repeat_interleave(slots.to(subject.device), dim=0))
    return compose


def compose_context_i2w(backbone, network, ref, texts) -> torch.Tensor:
    """c = the prompt's text feature with Context-I2W's ``<|replace|>`` token (id vocab-3) in the slot;
    the network maps (c, image tokens) to the pseudo-word that then fills the same slot."""
    texts_ = [prompts.comma_query_prompt(t) for t in texts]
    emb = backbone.model.token_embedding.weight
    replace = emb[emb.shape[0] - 3].unsqueeze(0).expand(len(texts_), -1)
    context = backbone.encode_prompts(texts_, replace)
    return backbone.encode_prompts(texts_, network(context, ref.tokens).subject)


@dataclass(frozen=True)
class Training:
    """How ``zscir pretrain --method NAME`` trains a method.

    objective:      (network, backbone, batch, LossWeights, gather) -> (loss, terms) (:mod:`zscir.models.objective`)
    network_config: the default config name in ``zscir/models/configs``
    data:           "images" (cached image features + split captions) or "captions" (caption text only)
    weights:        the loss weights and temperature unless the run sets them
    prepare:        (cfg, data, backbone, world, cache_root, accelerator, log) -> the data with the method's own
                    per-item fields (:class:`zscir.training.pretrain_data.ExtendedSet`); None: the data as built
    options:        the :class:`zscir.training.pretrain.PretrainConfig` fields only this method reads
    """

    objective: Callable
    network_config: str
    data: str
    weights: LossWeights = field(default_factory=LossWeights)
    prepare: Callable | None = None
    options: tuple[str, ...] = ()


DATA_KINDS = ("images", "captions")


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


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.training is not None and method.training.data not in DATA_KINDS:
        raise ValueError(f"method {method.name}: training data {method.training.data!r} is not one of {DATA_KINDS}")
    METHODS[method.name] = method
    return method


for _m in (
    Method("fti", FTINetwork, compose_fti, "a photo of * with * ... * but {text}", "fti4cir", "targetpad", True,
           "FTI4CIR (Lin et al., SIGIR 2024)", Training(objective.fti_objective, "fti4cir", "images")),
    Method("single", SingleTokenNetwork, single_token(prompts.single_query_prompt), "a photo of * but {text}",
           "both-orders", "targetpad", False, "zscir's single-token baseline",
           Training(objective.single_objective, "single", "images")),
    Method("searle", SingleTokenNetwork, single_token(prompts.that_query_prompt), "a photo of $ that {text}",
           "searle", "targetpad", False, "SEARLE (Baldrati et al., ICCV 2023)",
           Training(searle.searle_objective, "searle", "images", LossWeights(temperature=0.25, orth=0.0, reg=0.25),
                    searle.prepare_training,
                    ("vocabulary", "phrases", "oti_steps", "oti_batch_size", "oti_top_k", "oti_images"))),
    Method("lincir", SingleTokenNetwork, single_token(prompts.that_query_prompt, also_fills="$"),
           "a photo of $ that {text} (every $ filled)",
           "searle", "lincir", False, "LinCIR (Gu et al., CVPR 2024)",
           Training(objective.lincir_objective, "lincir", "captions")),
    Method("pic2word", Pic2WordNetwork, single_token(prompts.comma_query_prompt), "a photo of * , {text}",
           "pic2word", "clip", False, "Pic2Word (Saito et al., CVPR 2023)",
           Training(objective.pic2word_objective, "pic2word", "images")),
    Method("scot", combiner.ScotCombiner, combiner.compose_scot, "combiner(image, {text})", "both-orders",
           "targetpad", False, "SCOT-style zero-shot Combiner (Jawade et al., WACV 2025)",
           Training(combiner.scot_objective, "scot", "images", LossWeights(temperature=0.01, orth=0.0, reg=0.0),
                    combiner.prepare_training, ("edits",)), pseudo_words=False),
    Method("context-i2w", ContextI2WNetwork, compose_context_i2w, "a photo of <|replace|> , {text}",
           "pic2word", "clip", True, "Context-I2W (Tang et al., AAAI 2024)"),
):
    register_method(_m)


def get_method(name: str) -> Method:
    if name not in METHODS:
        from zscir.errors import ZscirError

        raise ZscirError(f"unknown method {name!r}: expected one of {', '.join(METHODS)}")
    return METHODS[name]


def trainable_methods() -> list[str]:
    """Names of the methods ``zscir pretrain --method`` trains, in registry order."""
    return [name for name, m in METHODS.items() if m.training is not None]


def get_training(name: str) -> Training:
    """The training facts of method ``name``; a one-line error naming --method for any other name."""
    method = METHODS.get(name)
    if method is None or method.training is None:
        from zscir.errors import ZscirError

        raise ZscirError(f"--method {name!r} is not a trainable method: expected one of {', '.join(trainable_methods())}")
    return method.training
