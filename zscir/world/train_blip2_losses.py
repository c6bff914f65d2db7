"""BLIP-2's first-stage losses on a ``Blip2ForImageTextRetrieval``: ITC and ITM with hard negatives.

As the BLIP-2 paper's representation stage (facts from LAVIS ``blip2_qformer.py``; this code is
zscir's own):

- **ITC**: the query tokens' outputs, projected and normalised, against the normalised projection
  of the text's first ([CLS]) output; an image-text similarity is the *maximum over query
  tokens*; divided by a learnable temperature (started at 0.07, clamped to [0.001, 0.5]);
  symmetric cross-entropy with label smoothing 0.1. Queries and text run through the Q-Former
  separately (unimodal masks), exactly as the model's own ITC forward does.
- **ITM**: for each text one negative image and for each image one negative text, drawn with
  probability ``softmax`` of the ITC similarities over the batch (the positive excluded): hard
  negatives. The Q-Former then reads queries and text together (bidirectional mask) with
  cross-attention to the image; the ITM head's two logits are averaged over the query
  positions; labels 1 for the B positive pairs, 0 for the 2B negative ones.
- **ITG** (image-grounded text generation) is left out: ``Blip2ForImageTextRetrieval`` has no
  language-model head on its Q-Former, so what it would train could not be saved in the folder.

Negatives are drawn with a generator seeded by (seed, step), so a resumed run draws what the
uninterrupted run drew.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TEMP_RANGE = (0.001, 0.5)
LABEL_SMOOTHING = 0.1


class Stage1(nn.Module):
    """The retrieval model plus the training-only temperature (what the train loop optimises and saves)."""

    def __init__(self, blip, init_temp: float):
        super().__init__()
        self.blip = blip
        self.temp = nn.Parameter(torch.tensor(float(init_temp)))


def encode_images(blip, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ViT outputs [B, P, Dv], normalised projected query outputs [B, Q, E])."""
    image_embeds = blip.vision_model(pixel_values=pixel_values).last_hidden_state
    queries = blip.query_tokens.expand(image_embeds.shape[0], -1, -1)
    ones = torch.ones(image_embeds.shape[:-1], dtype=torch.long)
    out = blip.qformer(query_embeds=queries, encoder_hidden_states=image_embeds, encoder_attention_mask=ones)
    return image_embeds, F.normalize(blip.vision_projection(out.last_hidden_state), dim=-1)


def encode_texts(blip, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Normalised projected [CLS] outputs [T, E] of the Q-Former's text side."""
    out = blip.qformer(query_embeds=blip.embeddings(input_ids=input_ids), query_length=0, attention_mask=attention_mask)
    return F.normalize(blip.text_projection(out.last_hidden_state[:, 0, :]), dim=-1)


def itc_similarity(image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """[B, T]: for each image and text, the best query token's cosine similarity."""
    return torch.einsum("bqe,te->btq", image_feats, text_feats).max(dim=-1).values


def itc_loss(similarity: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    targets = torch.arange(len(similarity))
    logits = similarity / temp
    return (F.cross_entropy(logits, targets, label_smoothing=LABEL_SMOOTHING)
            + F.cross_entropy(logits.T, targets, label_smoothing=LABEL_SMOOTHING)) / 2


def hard_negatives(similarity: torch.Tensor, temp: torch.Tensor, generator: torch.Generator):
    """(a negative image for each text [B], a negative text for each image [B]), drawn by ITC softmax."""
    with torch.no_grad():
        logits = (similarity / temp).detach().clone()
        logits.fill_diagonal_(float("-inf"))
        image_for_text = torch.multinomial(F.softmax(logits.T, dim=1), 1, generator=generator).squeeze(1)
        text_for_image = torch.multinomial(F.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    return image_for_text, text_for_image


def itm_logits(blip, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, 2] ITM logits of N (image, text) pairs, as the model's ITM forward computes them."""
    queries = blip.query_tokens.expand(image_embeds.shape[0], -1, -1)
    mask = torch.cat([torch.ones(queries.shape[:-1], dtype=attention_mask.dtype), attention_mask], dim=1)
    out = blip.qformer(query_embeds=blip.embeddings(input_ids=input_ids, query_embeds=queries),
                       query_length=queries.shape[1], attention_mask=mask, encoder_hidden_states=image_embeds,
                       encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long))
    return blip.itm_head(out.last_hidden_state[:, :queries.shape[1], :]).mean(dim=1)


def stage1_loss(model: Stage1, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                generator: torch.Generator, itm_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """ITC + ``itm_weight`` * ITM on a batch of B matching (image, text) pairs; also the parts, as floats."""
    with torch.no_grad():
        model.temp.clamp_(*TEMP_RANGE)
    blip = model.blip
    image_embeds, image_feats = encode_images(blip, pixel_values)
    similarity = itc_similarity(image_feats, encode_texts(blip, input_ids, attention_mask))
    loss_itc = itc_loss(similarity, model.temp)
    image_for_text, text_for_image = hard_negatives(similarity, model.temp, generator)
    b = len(input_ids)
    logits = itm_logits(blip, torch.cat([image_embeds, image_embeds[image_for_text], image_embeds]),
                        torch.cat([input_ids, input_ids, input_ids[text_for_image]]),
                        torch.cat([attention_mask, attention_mask, attention_mask[text_for_image]]))
    labels = torch.cat([torch.ones(b, dtype=torch.long), torch.zeros(2 * b, dtype=torch.long)])
    loss_itm = F.cross_entropy(logits, labels)
    return loss_itc + itm_weight * loss_itm, {"itc": loss_itc.item(), "itm": loss_itm.item(),
                                               "temp": model.temp.item()}
