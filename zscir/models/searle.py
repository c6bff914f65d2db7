"""SEARLE (Baldrati et al., ICCV 2023): optimisation-based textual inversion (OTI) and the distilled phi.

The facts come from the paper and the official code (miccunifi/SEARLE: ``src/oti_inversion.py``,
``src/train_phi.py``, ``src/image_concepts_association.py``, ``src/utils.py``); the code is zscir's own.

The method is three modules: this one (phi, its loss, the method's registry record),
:mod:`zscir.models.concepts` and :mod:`zscir.models.oti`; its training data (OTI over the training
images) is prepared by :mod:`zscir.training.searle_data`.

- **Concepts** (:mod:`zscir.models.concepts`). Each image gets the ``top_k`` words of a vocabulary nearest
  to it by CLIP zero-shot classification, each word's text feature the normalised mean of its normalised
  features in the PALAVRA templates (``image_concepts_association.py``; the official vocabulary is the
  Open Images V7 class names).
- **OTI** (:mod:`zscir.models.oti`). One token per image, initialised N(0, 0.02) and optimised with AdamW so that a template
  with the token ("a photo of *") has the image's text feature (cosine), regularised by phrases: a
  random phrase holding the token should encode like the same phrase holding one of the image's
  concept words. The official phrases are GPT-Neo phrases per concept; here a phrase is a template
  with one ``{}`` slot, from a list the user supplies or a registered vocabulary (the shapes world's
  own attribute words, :meth:`~zscir.models.concepts.ConceptPhrases.named`); ``ConceptPhrases.record`` says which.
  The result is the exponential moving average of the token over the steps (``train_phi.py`` reads
  ``ema_oti_pseudo_tokens.pt``).
- **phi.** :class:`~zscir.models.fti.SingleTokenNetwork` trained on the OTI tokens: PALAVRA's
  contrastive loss between phi's tokens and the OTI tokens (``train_phi.py``: ``contrastive_loss(
  target_oti_tokens, estimated_tokens, temperature)``, on the token embeddings themselves) plus the
  same phrase regulariser on phi's token (:func:`searle_loss`).
- **SEARLE-XL-OTI.** At query time OTI runs on the reference image instead of phi
  (:func:`zscir.models.oti.oti_compose`), with the query prompt of ``searle`` ("a photo of * that {text}").

Sampling uses a ``torch.Generator`` (OTI: one per chunk of images, from the seed, so a resumed run
draws what the uninterrupted one drew) or torch's global RNG (phi training, whose RNG state the
resumable training state saves).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zscir.models import prompts
from zscir.models.concepts import ConceptPhrases, phrase_regulariser, sample_phrases
from zscir.models.fti import SingleTokenNetwork
from zscir.models.losses import contrastive_loss
from zscir.models.method import Method, Training
from zscir.models.objective import LossWeights
from zscir.models.single import single_token


# ---------------------------------------------------------------- phi distilled from the OTI tokens
@dataclass
class SearleWeights:
    """Defaults: the official ``train_phi.py`` arguments (batch 256, AdamW lr 1e-4, weight decay 0.01, 100 epochs)."""

    phrases: ConceptPhrases
    temperature: float = 0.25   # --temperature of the distillation's contrastive loss
    distil: float = 1.0         # --lambda-distil
    reg: float = 0.25           # --lambda-gpt


def _identity_gather(v, t):
    return v, t


def searle_loss(network, backbone, pooled: torch.Tensor, tokens, subjects, attributes, w: SearleWeights,
                gather=_identity_gather, *, oti_tokens: torch.Tensor, concepts: torch.Tensor):
    """phi's loss, in the calling style of :mod:`zscir.models.objective` plus two batch fields.

    ``oti_tokens`` [B, d_tok]: each image's OTI token (:func:`zscir.models.oti.load_oti_tokens`); ``concepts``
    [B, k]: its concept indices into ``w.phrases.vocabulary`` (:func:`zscir.models.concepts.nearest_concepts`).
    ``gather`` collects the (OTI token, phi token) pairs of every process for the contrastive denominator.
    Phrases are drawn from torch's global RNG. ``tokens``, ``subjects`` and ``attributes`` are not used.
    """
    predicted = network(pooled).subject
    l_distil = contrastive_loss(*gather(oti_tokens.to(predicted.dtype), predicted), temperature=w.temperature)
    if w.reg > 0:
        with_word, with_token = sample_phrases(concepts.cpu(), w.phrases)
        l_reg = phrase_regulariser(backbone, predicted, with_word, with_token)
    else:
        l_reg = l_distil.new_zeros(())
    total = w.distil * l_distil + w.reg * l_reg
    return total, {"distillation": l_distil.detach(), "regulariser": l_reg.detach()}


def searle_objective(network, backbone, batch, w, gather=_identity_gather):
    """:func:`searle_loss` read from a training batch (:mod:`zscir.models.objective`'s signature): ``w``'s
    temperature and ``reg`` are the distillation temperature and lambda_gpt; ``batch.extra`` holds the OTI
    tokens, concepts and phrases (:func:`zscir.training.searle_data.prepare_training`)."""
    extra = batch.extra
    weights = SearleWeights(extra["phrases"], temperature=w.temperature, distil=1.0, reg=w.reg)
    return searle_loss(network, backbone, batch.pooled, None, None, None, weights, gather,
                       oti_tokens=extra["oti_tokens"], concepts=extra["concepts"])


METHOD = Method("searle", SingleTokenNetwork, single_token(prompts.that_query_prompt), "a photo of $ that {text}",
                "searle", "targetpad", False, "SEARLE (Baldrati et al., ICCV 2023)",
                Training(searle_objective, "searle", "images", LossWeights(temperature=0.25, orth=0.0, reg=0.25),
                         "zscir.training.searle_data:prepare_training",
                         ("vocabulary", "phrases", "oti_steps", "oti_batch_size", "oti_top_k", "oti_images")))
