"""The pretraining objectives of FTI4CIR and of the single-token baseline.

Both take cached frozen-CLIP image features and return the total loss with
its terms. ``gather`` collects (image, text) features from every process
(with gradient) so that the contrastive denominator spans the global batch;
on one process it is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from zscir.models import prompts
from zscir.models.losses import contrastive_loss, cosine_pull, orthogonality_loss

Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _identity_gather(v, t):
    return v, t


@dataclass
class LossWeights:
    temperature: float = 0.2
    orth: float = 1.0
    reg: float = 1.4


def fti_loss(network, backbone, pooled: torch.Tensor, tokens: torch.Tensor, subjects: list[str],
             attributes: list[str], w: LossWeights, gather: Gather = _identity_gather):
    pw = network(pooled, tokens)
    counts = pw.counts.tolist()
    text = backbone.encode_prompts([prompts.training_prompt(r) for r in counts],
                                   prompts.interleave(pw.subject, pw.attributes, pw.counts))
    l_con = contrastive_loss(*gather(pooled, text), temperature=w.temperature)
    l_orth = orthogonality_loss(pw.latent_topk)
    with torch.no_grad():
        target = backbone.encode_text([prompts.caption_prompt(s, a) for s, a in zip(subjects, attributes)])
    t_subject = backbone.encode_prompts([prompts.subject_prompt(a) for a in attributes], pw.subject)
    t_attribute = backbone.encode_prompts([prompts.attribute_prompt(s, r) for s, r in zip(subjects, counts)],
                                          pw.attributes)
    l_reg = cosine_pull(t_subject, target) + cosine_pull(t_attribute, target) + cosine_pull(text, target)
    total = l_con + w.orth * l_orth + w.reg * l_reg
    return total, {"contrastive": l_con.detach(), "orthogonal": l_orth.detach(), "regulariser": l_reg.detach(),
                   "attributes_per_image": pw.counts.float().mean()}


def single_loss(network, backbone, pooled: torch.Tensor, tokens, subjects, attributes, w: LossWeights,
                gather: Gather = _identity_gather):
    pw = network(pooled)
    text = backbone.encode_prompts([prompts.single_training_prompt()] * pooled.shape[0], pw.subject)
    l_con = contrastive_loss(*gather(pooled, text), temperature=w.temperature)
    return l_con, {"contrastive": l_con.detach()}


OBJECTIVES = {"fti": fti_loss, "single": single_loss}
