"""The pretraining objectives: FTI4CIR, the single-token baseline, Pic2Word and LinCIR.

Each ``*_loss`` takes tensors and returns the total loss with its terms; each
``*_objective`` is the same loss read from a training batch, the signature the
training loop calls through a method's registry entry
(:class:`zscir.models.method.Training`): ``(network, backbone, batch, weights, gather)``.
FTI4CIR, single and Pic2Word read cached frozen-CLIP image features
(:class:`zscir.training.pretrain_data.Batch`); LinCIR reads cached caption text
features (:class:`zscir.training.pretrain_data.CaptionBatch`). ``gather``
collects (image, text) features from every process (with gradient) so that the
contrastive denominator spans the global batch; on one process it is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from zscir.models import prompts
from zscir.models.losses import clip_contrastive_loss, contrastive_loss, cosine_pull, orthogonality_loss

Gather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _identity_gather(v, t):
    return v, t


@dataclass(frozen=True)
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


def pic2word_loss(network, backbone, pooled: torch.Tensor, gather: Gather = _identity_gather):
    """Pic2Word (Saito et al., CVPR 2023): w = phi(v), text feature of "a photo of *" with w in the slot,
    CLIP's symmetric InfoNCE between v and that feature over the (global) batch.

    As google-research/composed_image_retrieval ``get_loss_img2text``: image->text and text->image
    cross-entropy averaged, B x B cross-modal logits only, scaled by the frozen CLIP's own
    ``logit_scale.exp()`` (100 for OpenAI CLIP, i.e. temperature 0.01); ``--temperature`` is not used.
    """
    w = network(pooled).subject
    text = backbone.encode_prompts([prompts.single_training_prompt()] * pooled.shape[0], w)
    scale = backbone.model.logit_scale.detach().exp()
    l_con = clip_contrastive_loss(*gather(pooled, text), scale)
    return l_con, {"contrastive": l_con.detach()}


def lincir_noise(text_features: torch.Tensor) -> torch.Tensor:
    """LinCIR's noise (navervision/lincir ``train_phi.py``): per caption a scale u ~ U(0, 1) times
    N(0, I), added to the unnormalised projected text feature. Drawn from torch's global RNG
    (saved and restored with the training state, so a resumed run draws the same)."""
    u = torch.rand(text_features.shape[0], 1, device=text_features.device)
    return u * torch.randn_like(text_features)


def lincir_loss(network, backbone, text_features: torch.Tensor, masked: list[str], noise: torch.Tensor):
    """LinCIR (Gu et al., CVPR 2024), self-masking projection: w = phi(t + noise); the caption with its
    keywords replaced by ``*`` slots (``masked``, every slot filled with w) is encoded; the loss is the
    MSE (mean over batch and dimensions) between that feature and t, both unnormalised, as the official
    ``F.mse_loss(replaced_text_embeddings, original_text_embeddings)``."""
    w = network(text_features + noise).subject
    slots = (backbone.tokenize(masked) == backbone.placeholder_token_id).sum(dim=1)
    pred = backbone.encode_prompts(masked, w.repeat_interleave(slots.to(w.device), dim=0))
    l_mse = F.mse_loss(pred, text_features)
    return l_mse, {"mse": l_mse.detach()}


# the loop's signature: (network, backbone, batch, weights, gather) -> (loss, terms)
def fti_objective(network, backbone, batch, w: LossWeights, gather: Gather = _identity_gather):
    return fti_loss(network, backbone, batch.pooled, batch.tokens, batch.subjects, batch.attributes, w, gather)


def single_objective(network, backbone, batch, w: LossWeights, gather: Gather = _identity_gather):
    return single_loss(network, backbone, batch.pooled, None, None, None, w, gather)


def pic2word_objective(network, backbone, batch, w: LossWeights, gather: Gather = _identity_gather):
    return pic2word_loss(network, backbone, batch.pooled, gather)


def lincir_objective(network, backbone, batch, w: LossWeights, gather: Gather = _identity_gather):
    return lincir_loss(network, backbone, batch.text_features, batch.masked, lincir_noise(batch.text_features))
