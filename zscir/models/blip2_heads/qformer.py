"""How a BLIP-2 composes a CIR query, on a transformers ``Blip2ForImageTextRetrieval`` (modules used:
``query_tokens``, ``embeddings``, ``qformer``, ``vision_projection``, ``text_projection``).

As SPRC and BLIP4CIR compose with BLIP-2 (and FineCIR's published code, ``extract_retrieval_compose``):

- **query side**: the Q-Former reads the learned query tokens (plus any extra tokens a head
  appends, e.g. FineCIR's entity tokens) followed by the modification text's tokens, all in one
  self-attention; the query part cross-attends to the *reference* image's frozen vision hidden
  states. The composed feature is the text [CLS] output (the first text position, right after
  the query part), through ``text_projection``, L2-normalised.
- **candidate side**: the Q-Former reads the learned query tokens alone over the *candidate*
  image; each output through ``vision_projection``, L2-normalised: [Q, D] per image.
- **score**: the best query token, ``max_q <composed, candidate_q>`` (BLIP-2's ITC rule).

The image side takes the frozen vision encoder's last hidden state (``vision_model(pixel_values)
.last_hidden_state``: BLIP-2's ``ln_vision`` output), so that it can be computed once and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tokenize(tokenizer, texts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``texts``, padded to the longest, cut at ``max_length`` tokens."""
    out = tokenizer(list(texts), padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
    return out["input_ids"].to(device), out["attention_mask"].to(device)


def text_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The Q-Former's text-only [CLS] hidden state [B, W] (BLIP-2's text branch, before ``text_projection``)."""
    out = model.qformer(query_embeds=model.embeddings(input_ids=input_ids), query_length=0,
                        attention_mask=attention_mask)
    return out.last_hidden_state[:, 0]


def compose_hidden(model, image_hidden: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   extra: torch.Tensor | None = None, extra_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The text [CLS] output [B, W] of the joint pass (query tokens [+ ``extra`` [B, E, W]], text) over the image."""
    b = image_hidden.shape[0]
    queries = model.query_tokens.expand(b, -1, -1)
    query_mask = torch.ones(queries.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
    if extra is not None:
        queries = torch.cat([queries, extra.to(queries.dtype)], 1)
        query_mask = torch.cat([query_mask, extra_mask.to(attention_mask.dtype)], 1)
    embeds = model.embeddings(input_ids=input_ids, query_embeds=queries)
    image_mask = torch.ones(image_hidden.shape[:2], dtype=torch.long, device=image_hidden.device)
    out = model.qformer(query_embeds=embeds, query_length=queries.shape[1],
                        attention_mask=torch.cat([query_mask, attention_mask], 1),
                        encoder_hidden_states=image_hidden, encoder_attention_mask=image_mask)
    return out.last_hidden_state[:, queries.shape[1]]


def compose(model, image_hidden, input_ids, attention_mask, extra=None, extra_mask=None) -> torch.Tensor:
    """The composed query feature [B, D]: ``text_projection`` of :func:`compose_hidden`, L2-normalised."""
    hidden = compose_hidden(model, image_hidden, input_ids, attention_mask, extra, extra_mask)
    return F.normalize(model.text_projection(hidden), dim=-1)


def candidate_tokens(model, image_hidden: torch.Tensor) -> torch.Tensor:
    """The candidate side [T, Q, D]: the query tokens over each image, ``vision_projection``, L2-normalised."""
    queries = model.query_tokens.expand(image_hidden.shape[0], -1, -1)
    image_mask = torch.ones(image_hidden.shape[:2], dtype=torch.long, device=image_hidden.device)
    out = model.qformer(query_embeds=queries, query_length=queries.shape[1], encoder_hidden_states=image_hidden,
                        encoder_attention_mask=image_mask)
    return F.normalize(model.vision_projection(out.last_hidden_state), dim=-1)


def best_token_scores(composed: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[B, T]: for each query and candidate, the cosine of the query with the candidate's best query token."""
    return torch.einsum("bd,tqd->btq", composed, candidates).amax(-1)
