"""The frozen BLIP-2 retrieval backbone (transformers ``Blip2ForImageTextRetrieval``).

Features are computed as BLIP-2's image-text contrastive (ITC) head computes them, by the submodules
``Blip2ForImageTextRetrieval.forward`` runs (``use_image_text_matching_head=False``):

- image: the frozen vision encoder's last hidden state, attended by the ``Q`` learned query tokens in the
  Q-Former, each query output through ``vision_projection`` and L2-normalised: ``[B, Q, D]``;
- text: the Q-Former over the text alone, its first ([CLS]) output through ``text_projection``,
  L2-normalised: ``[B, D]``;
- similarity of a text and an image: the largest dot product over the image's ``Q`` query features.

Image-text matching (ITM): the Q-Former over the query tokens and the text together, cross-attending the
image; ``itm_head`` on the ``Q`` query outputs, averaged; the match probability is the softmax's class 1.
:class:`zscir.models.itm_rerank.ItmRerank` re-orders a ranking's top k by it, and only the top k.

In the feature store (and so in ``zscir eval``'s gallery cache) one image is one row of width ``Q * D``:
its ``Q`` normalised query features, flattened in query order (:attr:`feature_width`; the store's
``embed_dim`` field holds that width). :attr:`image_layout` (``"query_tokens"``) tells the query models
to score such rows by the max over query tokens (:mod:`zscir.models.query_tokens`).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
import torch.nn.functional as F

from zscir.backbone.clip import ImageFeatures
from zscir.backbone.preprocess import Preprocess
from zscir.errors import ZscirError

QUERY_TOKENS = "query_tokens"   # image_layout: a gallery row holds Q query features (max over them scores)


class Blip2Backbone:
    """A frozen ``Blip2ForImageTextRetrieval`` with its processor, zscir preprocessing and identity."""

    image_layout = QUERY_TOKENS

    def __init__(self, model, processor, preprocess: Preprocess, identity: dict, device, max_text_length: int):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.preprocess = preprocess
        self.identity = identity
        self.device = torch.device(device)
        self.source: dict | None = None         # how to load it again: {"name", "pretrained": None}
        self.truncated_prompts = 0              # texts cut at max_text_length so far
        self.max_text_length = int(max_text_length)
        self.image_size = preprocess.size
        self.num_query_tokens = int(model.config.num_query_tokens)
        self.embed_dim = int(model.config.image_text_hidden_size)
        self.vision_width = int(model.config.vision_config.hidden_size)
        self.token_dim = None                   # no CLIP-style token embedding: pseudo-word methods refuse it

    # identity (the interface of zscir.backbone.clip.Backbone) -------------
    @property
    def identity_str(self) -> str:
        return f"{self.identity['model']}@{self.identity['pretrained']}"

    @property
    def preprocess_name(self) -> str:
        return self.preprocess.name

    @property
    def feature_width(self) -> int:
        """Width of one image's row in the feature store: ``Q * D``."""
        return self.num_query_tokens * self.embed_dim

    @property
    def cast_dtype(self) -> torch.dtype:
        return self.model.vision_projection.weight.dtype

    # images -----------------------------------------------------------------
    def pixels(self, images) -> torch.Tensor:
        """``pixel_values`` [B, 3, H, W] on the device: a tensor as it is, a list of PIL images through the
        model's own image processor."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device, self.cast_dtype)
        batch = self.processor.image_processor(images=list(images), return_tensors="pt")
        return batch["pixel_values"].to(self.device, self.cast_dtype)

    @torch.no_grad()
    def vision_hidden(self, pixel_values) -> torch.Tensor:
        """The frozen vision encoder's last hidden state [B, 1 + P, vision_width] (what the Q-Former attends)."""
        return self.model.vision_model(pixel_values=self.pixels(pixel_values)).last_hidden_state

    def _query_outputs(self, image_embeds: torch.Tensor) -> torch.Tensor:
        m = self.model
        query = m.query_tokens.expand(image_embeds.shape[0], -1, -1)
        mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = m.qformer(query_embeds=query, encoder_hidden_states=image_embeds, encoder_attention_mask=mask)
        return out.last_hidden_state

    def _itc_image(self, hidden: torch.Tensor) -> torch.Tensor:
        queries = self._query_outputs(hidden).to(self.model.vision_projection.weight.dtype)
        return F.normalize(self.model.vision_projection(queries), dim=-1).float()

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """[B, Q, D] L2-normalised query features after ``vision_projection`` (BLIP-2's ITC image features)."""
        return self._itc_image(self.vision_hidden(images))

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, with_tokens: bool = False) -> ImageFeatures:
        """The feature store's pass: ``pooled`` [B, Q * D] (the query features, flattened), ``tokens`` the vision
        encoder's last hidden state when asked."""
        hidden = self.vision_hidden(images)
        return ImageFeatures(self._itc_image(hidden).flatten(1), hidden.float() if with_tokens else None)

    def query_features(self, rows: torch.Tensor) -> torch.Tensor:
        """Store rows [B, Q * D] (or [B, Q, D]) back to [B, Q, D] query features, each L2-normalised again."""
        return F.normalize(rows.float().reshape(rows.shape[0], self.num_query_tokens, self.embed_dim), dim=-1)

    def image_query(self, features: ImageFeatures) -> torch.Tensor:
        """One [B, D] vector for an image used as a query (the image and sum baselines): the normalised
        mean of its query features."""
        return F.normalize(self.query_features(features.pooled).mean(dim=1), dim=-1)

    # text -------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], count: bool = True) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask [N, L] (padded to the longest, cut at ``max_text_length``)."""
        texts = list(texts)
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_text_length,
                               return_tensors="pt")
        if count:
            full = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
            cut = sum(n > self.max_text_length for n in full)
            if cut:
                self.truncated_prompts += cut
                warnings.warn(f"texts longer than {self.max_text_length} tokens are truncated "
                              "(count so far in backbone.truncated_prompts)", stacklevel=2)
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[B, D] L2-normalised text features: the Q-Former's [CLS] output after ``text_projection``."""
        m = self.model
        tokens = self.tokenize(texts)
        embeds = m.embeddings(input_ids=tokens["input_ids"])
        out = m.qformer(query_embeds=embeds, query_length=0, attention_mask=tokens["attention_mask"])
        cls = out.last_hidden_state[:, 0, :].to(m.text_projection.weight.dtype)
        return F.normalize(m.text_projection(cls), dim=-1).float()

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """The backbone interface's name for :meth:`encode_texts` (the text baseline calls it)."""
        return self.encode_texts(texts)

    # scores -----------------------------------------------------------------
    @staticmethod
    def similarity(image_q: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """ITC scores [Nt, Ni]: for each text [Nt, D] and image [Ni, Q, D], the max over query tokens."""
        return torch.einsum("td,iqd->tiq", text.float(), image_q.float()).amax(dim=-1)

    @torch.no_grad()
    def itm_scores(self, pixel_values, texts: Sequence[str]) -> torch.Tensor:
        """[B] ITM match probabilities of the pairs (image i, text i)."""
        m = self.model
        texts = list(texts)
        hidden = self.vision_hidden(pixel_values)
        if hidden.shape[0] != len(texts):
            raise ZscirError(f"itm_scores: {hidden.shape[0]} images but {len(texts)} texts (pairs expected)")
        tokens = self.tokenize(texts, count=False)
        query = m.query_tokens.expand(hidden.shape[0], -1, -1)
        mask = torch.cat([torch.ones(query.shape[:-1], dtype=torch.long, device=self.device),
                          tokens["attention_mask"]], dim=1)
        embeds = m.embeddings(input_ids=tokens["input_ids"], query_embeds=query)
        image_mask = torch.ones(hidden.shape[:-1], dtype=torch.long, device=self.device)
        out = m.qformer(query_embeds=embeds, query_length=query.shape[1], attention_mask=mask,
                        encoder_hidden_states=hidden, encoder_attention_mask=image_mask).last_hidden_state
        logits = m.itm_head(out[:, :query.shape[1], :].to(m.itm_head.weight.dtype)).mean(dim=1)
        return logits.float().softmax(dim=-1)[:, 1]

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)
