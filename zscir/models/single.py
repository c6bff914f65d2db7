"""Single-token methods: one pseudo-word from the pooled image feature in a query prompt.

zscir's single-token baseline and LinCIR use :class:`~zscir.models.fti.SingleTokenNetwork`; SEARLE
(:mod:`zscir.models.searle`) and Pic2Word (:mod:`zscir.models.pic2word`) compose with
:func:`single_token` too.
"""

from __future__ import annotations

from typing import Callable

import torch

from zscir.models import prompts
from zscir.models.fti import SingleTokenNetwork
from zscir.models.method import Method, Training
from zscir.models.objective import lincir_objective, single_objective


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
        slots = (backbone.tokenize(texts_, count=False) == backbone.placeholder_token_id).sum(dim=1)
        return backbone.encode_prompts(texts_, subject.repeat_interleave(slots.to(subject.device), dim=0))
    return compose


SINGLE = Method("single", SingleTokenNetwork, single_token(prompts.single_query_prompt), "a photo of * but {text}",
                "both-orders", "targetpad", False, "zscir's single-token baseline",
                Training(single_objective, "single", "images"))

LINCIR = Method("lincir", SingleTokenNetwork, single_token(prompts.that_query_prompt, also_fills="$"),
                "a photo of $ that {text} (every $ filled)",
                "searle", "lincir", False, "LinCIR (Gu et al., CVPR 2024)",
                Training(lincir_objective, "lincir", "captions"))
