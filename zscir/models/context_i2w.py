"""Context-I2W's mapping network (Tang et al., AAAI 2024): context-dependent word mapping.

The modification prompt's text feature ``c`` selects, element-wise, what of the
reference image's tokens matters (the "context rotator": ``W_R`` with weight
normalisation, times ``to_c(c)``); a Perceiver-style extractor of 4 latents
(6 layers of cross-attention over [tokens; latents] plus a GELU feed-forward)
reads the patch tokens; the CLS token and the mean of the latents each go
through LayerNorm, a projection and a Pic2Word-style ReLU MLP; the pseudo-word
is ``global + tanh(local_gate) * local``.

Written from the description of ``IM2TEXT_OWM_Attn`` in Pter61/context-i2w
(``model/model.py``); the parameter names follow it so its released
``state_dict_img2text`` loads unchanged (``W_R.weight_g`` / ``W_R.weight_v``
are kept as the two weight-norm factors, not folded).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zscir.models import prompts
from zscir.models.fti import PseudoWords
from zscir.models.method import Method
from zscir.models.pic2word import relu_mlp


class WeightNormLinear(nn.Module):
    """A bias-free linear layer whose weight is ``weight_g * weight_v / ||weight_v||`` (per output row)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.randn(out_features, in_features) * in_features ** -0.5)
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=1, keepdim=True).clone())

    def forward(self, x):
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class ContextAttention(nn.Module):
    """Latents attend over [image tokens; latents] (``ContextDependantAttention``)."""

    def __init__(self, dim: int, dim_head: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, dim_head ** -0.5
        inner = dim_head * heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x, latents):
        x, latents = self.norm_media(x), self.norm_latents(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        b = x.shape[0]
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax((q * self.scale) @ k.transpose(-1, -2), dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, latents.shape[1], -1))


class VisualTargetExtractor(nn.Module):
    def __init__(self, dim: int, depth: int = 6, dim_head: int = 64, heads: int = 8, num_latents: int = 4,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList([nn.ModuleList([
            ContextAttention(dim, dim_head, heads),
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * ff_mult, bias=False), nn.GELU(),
                          nn.Linear(dim * ff_mult, dim, bias=False)),
        ]) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1).to(x.dtype)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)


class ContextI2WNetwork(nn.Module):
    """(prompt text feature c [B, text_width], image tokens [B, 1+P, W]) -> one pseudo-word."""

    method = "context-i2w"

    def __init__(self, embed_dim: int, token_dim: int, vision_width: int, text_width: int | None = None,
                 middle_dim: int = 512, n_layer: int = 2, dropout: float = 0.1, depth: int = 6, heads: int = 8,
                 dim_head: int = 64, num_latents: int = 4, ff_mult: int = 4):
        super().__init__()
        text_width = text_width or embed_dim
        self.to_c = nn.Linear(text_width, vision_width, bias=False)
        self.W_R = WeightNormLinear(vision_width, vision_width)
        self.ln_post, self.ln_post_local = nn.LayerNorm(vision_width), nn.LayerNorm(vision_width)
        self.proj = nn.Parameter(vision_width ** -0.5 * torch.randn(vision_width, token_dim))
        self.proj_local = nn.Parameter(vision_width ** -0.5 * torch.randn(vision_width, token_dim))
        self.VT_Extractor = VisualTargetExtractor(vision_width, depth, dim_head, heads, num_latents, ff_mult)
        self.layers = relu_mlp(token_dim, middle_dim, n_layer, dropout)
        self.fc_out = nn.Linear(middle_dim, token_dim)
        self.layers_local = relu_mlp(token_dim, middle_dim, n_layer, dropout)
        self.fc_out_local = nn.Linear(middle_dim, token_dim)
        self.local_gate = nn.Parameter(torch.zeros(1))

    def forward(self, context: torch.Tensor, tokens: torch.Tensor) -> PseudoWords:
        x = self.W_R(tokens) * self.to_c(context).unsqueeze(1)
        local = self.VT_Extractor(x[:, 1:]).mean(dim=1)          # the official AvgPool2d((4, 1)) over the latents
        g = self.fc_out(self.layers(self.ln_post(x[:, 0]) @ self.proj))
        l = self.fc_out_local(self.layers_local(self.ln_post_local(local) @ self.proj_local))
        subject = g + l * self.local_gate.tanh()
        return PseudoWords(subject, subject.new_zeros(0, subject.shape[1]),
                           torch.zeros(subject.shape[0], dtype=torch.long, device=subject.device))


def compose_context_i2w(backbone, network, ref, texts) -> torch.Tensor:
    """c = the prompt's text feature with Context-I2W's ``<|replace|>`` token (id vocab-3) in the slot;
    the network maps (c, image tokens) to the pseudo-word that then fills the same slot."""
    texts_ = [prompts.comma_query_prompt(t) for t in texts]
    emb = backbone.model.token_embedding.weight
    replace = emb[emb.shape[0] - 3].unsqueeze(0).expand(len(texts_), -1)
    context = backbone.encode_prompts(texts_, replace, count=False)  # encoded again below: count once
    return backbone.encode_prompts(texts_, network(context, ref.tokens).subject)


METHOD = Method("context-i2w", ContextI2WNetwork, compose_context_i2w, "a photo of <|replace|> , {text}",
                "pic2word", "clip", True, "Context-I2W (Tang et al., AAAI 2024)")
