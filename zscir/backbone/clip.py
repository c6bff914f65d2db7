"""The frozen CLIP backbone: one visual pass, text encoding, pseudo-word prompts.

Textual inversion needs one operation open_clip does not offer: encode a
prompt in which some token embeddings are produced by a network instead of
looked up in the vocabulary. :meth:`Backbone.encode_prompts` does it for a
batch of prompts, each with any number of placeholders, without a per-sample
loop: the placeholder positions are found with one mask and filled with
``masked_scatter`` in row-major order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool

from zscir.backbone.preprocess import Preprocess
from zscir.backbone.tokenize import WordCachedTokenizer
from zscir.errors import ZscirError

PLACEHOLDER = "*"


@dataclass
class ImageFeatures:
    """Output of one visual pass.

    pooled: [B, D] projected global feature (not normalised).
    tokens: [B, 1 + P, vision_width] final-block outputs (CLS + patches) before
            ``ln_post``, or None when not requested.
    """

    pooled: torch.Tensor
    tokens: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return self.pooled.shape[0]

    def __getitem__(self, index) -> "ImageFeatures":
        return ImageFeatures(self.pooled[index], None if self.tokens is None else self.tokens[index])

    def to(self, device=None, dtype=None) -> "ImageFeatures":
        return ImageFeatures(self.pooled.to(device=device, dtype=dtype),
                             None if self.tokens is None else self.tokens.to(device=device, dtype=dtype))


class Backbone:
    """A frozen open_clip CLIP model with its tokenizer, preprocessing and identity."""

    placeholder = PLACEHOLDER
    image_layout = "pooled"   # a gallery row is one feature (BLIP-2: "query_tokens", zscir.backbone.blip2)

    def __init__(self, model, tokenizer, preprocess: Preprocess, identity: dict, device: torch.device):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self._fast_tokenizer = WordCachedTokenizer(tokenizer) if WordCachedTokenizer.supports(tokenizer) else None
        self.preprocess = preprocess
        self.identity = identity
        self.truncated_prompts = 0  # prompts cut at the context length so far
        self.source: dict | None = None  # how to load it again: {"name", "pretrained"} (set by load_backbone)
        self.device = torch.device(device)
        visual = model.visual
        self.image_size = preprocess.size
        self.vision_width = visual.transformer.width if hasattr(visual, "transformer") else None
        self.embed_dim = int(visual.output_dim)
        self._has_clip_text = hasattr(model, "token_embedding")
        self.token_dim = model.token_embedding.weight.shape[1] if self._has_clip_text else None
        self.context_length = int(getattr(model, "context_length", None) or tokenizer.context_length)

    # identity -------------------------------------------------------------
    @property
    def identity_str(self) -> str:
        return f"{self.identity['model']}@{self.identity['pretrained']}"

    @property
    def preprocess_name(self) -> str:
        return self.preprocess.name

    @property
    def feature_width(self) -> int:
        """Width of one image's row in the feature store (the projected feature: ``embed_dim``)."""
        return self.embed_dim

    def image_query(self, features: ImageFeatures) -> torch.Tensor:
        """[B, D]: an image used as a query (the image and sum baselines): its pooled feature."""
        return features.pooled

    @property
    def cast_dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype if hasattr(self.model.visual, "conv1") else torch.float32

    # images ---------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: torch.Tensor, with_tokens: bool = False) -> ImageFeatures:
        """One visual pass -> projected pooled feature and, optionally, the pre-``ln_post`` tokens."""
        images = images.to(self.device, self.cast_dtype)
        visual = self.model.visual
        if not with_tokens:
            return ImageFeatures(self.model.encode_image(images).float())
        if not hasattr(visual, "_embeds"):
            raise ZscirError(f"{self.identity_str}: token outputs need an open_clip VisionTransformer image tower")
        x = visual.transformer(visual._embeds(images))
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return ImageFeatures(pooled.float(), x.float())

    # text -----------------------------------------------------------------
    def tokenize(self, texts: list[str], count: bool = True) -> torch.Tensor:
        """Token ids [N, context_length]. ``count``: add prompts cut at the context length to
        ``truncated_prompts`` (False for a method's first pass over prompts it encodes again)."""
        tokenizer = self._fast_tokenizer or self.tokenizer
        tokens = tokenizer(texts, context_length=self.context_length)
        full = (tokens[:, -1] != 0).nonzero().flatten().tolist()
        truncated = [i for i in full if len(tokenizer.encode(texts[i])) + 2 > self.context_length]
        if truncated and count:
            self.truncated_prompts += len(truncated)
            # a constant message: Python shows it once per call site instead of once per batch
            warnings.warn(f"prompts longer than the context length {self.context_length} are truncated "
                          f"(count so far in backbone.truncated_prompts)", stacklevel=2)
        return tokens.to(self.device)

    @property
    def placeholder_token_id(self) -> int:
        """Token id of :data:`PLACEHOLDER`, derived from the tokenizer (never hard-coded)."""
        ids = self.tokenizer.encode(PLACEHOLDER)
        if len(ids) != 1:
            raise ZscirError(f"the tokenizer of {self.identity_str} splits the placeholder {PLACEHOLDER!r} into {len(ids)} tokens")
        return ids[0]

    def _encode_token_embeddings(self, tokens: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """open_clip's ``encode_text`` from the token-embedding stage on."""
        m = self.model
        cast = m.transformer.get_cast_dtype()
        attn_mask = m.attn_mask
        if attn_mask is not None and m.text_pool_type == "argmax":
            # causal attention + pooling at the end-of-text token: positions after the longest prompt's
            # end-of-text token cannot change the result, so they are not computed (2-3x less work)
            length = int(tokens.argmax(dim=-1).max()) + 1
            tokens, embeddings, attn_mask = tokens[:, :length], embeddings[:, :length], attn_mask[:length, :length]
        x = embeddings.to(cast) + m.positional_embedding[: embeddings.shape[1]].to(cast)
        x = m.transformer(x, attn_mask=attn_mask)
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        if m.text_projection is not None:
            x = m.text_projection(x) if isinstance(m.text_projection, torch.nn.Linear) else x @ m.text_projection
        return x.float()

    def _require_clip_text(self):
        if not self._has_clip_text:
            raise ZscirError(f"{self.identity_str}: pseudo-word prompts need a CLIP-style text tower (token_embedding)")

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenize(list(texts))
        if not self._has_clip_text:
            return self.model.encode_text(tokens).float()
        return self._encode_token_embeddings(tokens, self.model.token_embedding(tokens))

    def encode_prompts(self, prompts: list[str], pseudo_words: torch.Tensor, count: bool = True) -> torch.Tensor:
        """Encode prompts whose placeholders are filled, in row-major order, by ``pseudo_words`` [N, token_dim].

        Runs with whatever grad mode the caller has: gradients reach ``pseudo_words``
        through the frozen text tower. ``count``: as :meth:`tokenize`.
        """
        self._require_clip_text()
        tokens = self.tokenize(list(prompts), count)
        slots = tokens == self.placeholder_token_id
        if int(slots.sum()) != pseudo_words.shape[0]:
            raise ZscirError(f"prompts hold {int(slots.sum())} placeholders {PLACEHOLDER!r} "
                             f"but {pseudo_words.shape[0]} pseudo-words were given")
        embeddings = self.model.token_embedding(tokens)
        embeddings = embeddings.masked_scatter(slots.unsqueeze(-1), pseudo_words.to(embeddings.dtype))
        return self._encode_token_embeddings(tokens, embeddings)

    @staticmethod
    def normalize(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)
