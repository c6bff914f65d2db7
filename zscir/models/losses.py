"""FTI4CIR's loss terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Symmetric InfoNCE over the 2B stacked items [image; text].

    Each anchor's positive is its pair; its denominator runs over all 2B - 1
    other items, cross-modal and same-modal (PALAVRA / FTI4CIR).
    """
    x = F.normalize(torch.cat([image, text]), dim=-1)
    b = image.shape[0]
    logits = x @ x.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=x.device), float("-inf"))
    positives = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(x.device)
    return F.cross_entropy(logits, positives)


def orthogonality_loss(latent_topk: torch.Tensor) -> torch.Tensor:
    """MSE between the Gram matrix of the L2-normalised top-k latent features and I, per image."""
    z = F.normalize(latent_topk, dim=-1)
    gram = z @ z.transpose(1, 2)
    eye = torch.eye(z.shape[1], device=z.device).expand_as(gram)
    return F.mse_loss(gram, eye)


def cosine_pull(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(pred, target)."""
    return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()


def clip_contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over the B x B cross-modal logits (Pic2Word's objective).

    The mean of image->text and text->image cross-entropy, positives on the diagonal, no same-modal
    negatives (unlike :func:`contrastive_loss`).
    """
    logits = logit_scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
