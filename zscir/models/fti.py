"""FTI4CIR's fine-grained textual inversion network.

From one image's frozen CLIP features it produces one subject pseudo-word
(phi_s of the global feature) and r attribute pseudo-words: n learnable latent
queries attend, through a small transformer, over the image's tokens; each
output is squashed to Z_j in the joint space; the ones most relevant to the
global feature (softmax relevance above epsilon, at least 1, at most topk) are
kept in query order and mapped by phi_a.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zscir.models import prompts
from zscir.models.method import Method, Training
from zscir.models.objective import fti_objective
from zscir.models.phi import Phi


class Attention(nn.Module):
    """Multi-head self-attention with bias-free q and kv projections (as the official code)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width)

    def forward(self, x):
        b, n, w = x.shape
        q = self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, w // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with a ReLU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@dataclass
class PseudoWords:
    """Pseudo-words for a batch, packed for :meth:`Backbone.encode_prompts`.

    subject:    [B, d_tok]
    attributes: [sum(counts), d_tok], image 0's first, in latent-query order
    counts:     [B] number of attribute pseudo-words per image (r)
    latent_topk:[B, topk, d] the top-k latent features Z (for the orthogonality loss)
    """

    subject: torch.Tensor
    attributes: torch.Tensor
    counts: torch.Tensor
    latent_topk: torch.Tensor | None = None


def select_attributes(latent: torch.Tensor, global_feat: torch.Tensor, topk: int, epsilon: float):
    """Hard selection of the relevant latent features.

    latent [B, n, d], global_feat [B, d] -> (selected mask [B, n] bool, counts [B], topk indices [B, topk]).
    r_i = clamp(#{j: a_ij > epsilon}, 1, topk) with a = softmax_j(Z_j . v_g); the r_i most relevant
    queries are kept, in query-index order (the mask's row-major order). No gradient flows through a.
    """
    with torch.no_grad():
        relevance = torch.softmax(torch.einsum("bnd,bd->bn", latent.float(), global_feat.float()), dim=1)
        counts = (relevance > epsilon).sum(dim=1).clamp(1, topk)
        order = relevance.argsort(dim=1, descending=True, stable=True)[:, :topk]
        keep_rank = torch.arange(topk, device=latent.device).unsqueeze(0) < counts.unsqueeze(1)
        selected = torch.zeros_like(relevance, dtype=torch.bool)
        selected.scatter_(1, order, keep_rank)
    return selected, counts, order


class FTINetwork(nn.Module):
    """Image features -> subject and attribute pseudo-words."""

    method = "fti"

    def __init__(self, embed_dim: int, token_dim: int, vision_width: int, num_queries: int = 24, layers: int = 3,
                 heads: int = 1, mlp_ratio: float = 2, topk: int = 12, epsilon: float = 0.05, hidden_mult: int = 4,
                 dropout: float = 0.5):
        super().__init__()
        self.topk, self.epsilon, self.num_queries = topk, epsilon, num_queries
        self.queries = nn.Parameter(torch.randn(1, num_queries, vision_width))
        self.blocks = nn.Sequential(*[Block(vision_width, heads, mlp_ratio) for _ in range(layers)])
        self.to_latent = nn.Sequential(nn.Linear(vision_width, embed_dim), nn.Sigmoid())
        self.phi_s = Phi(embed_dim, embed_dim * hidden_mult, token_dim, dropout)
        self.phi_a = Phi(embed_dim, embed_dim * hidden_mult, token_dim, dropout)

    def latent_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1+P, W] -> Z [B, n, d]."""
        x = torch.cat([self.queries.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.to_latent(self.blocks(x)[:, : self.num_queries])

    def forward(self, global_feat: torch.Tensor, tokens: torch.Tensor) -> PseudoWords:
        latent = self.latent_features(tokens)
        selected, counts, order = select_attributes(latent, global_feat, self.topk, self.epsilon)
        latent_topk = torch.gather(latent, 1, order.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))
        attributes = self.phi_a(F.normalize(latent[selected], dim=-1))
        return PseudoWords(self.phi_s(global_feat), attributes, counts, latent_topk)


class SingleTokenNetwork(nn.Module):
    """The single-token baseline (Pic2Word / SEARLE style): one pseudo-word from the global feature."""

    method = "single"

    def __init__(self, embed_dim: int, token_dim: int, vision_width: int | None = None, hidden_mult: int = 4,
                 dropout: float = 0.5):
        super().__init__()
        self.phi = Phi(embed_dim, embed_dim * hidden_mult, token_dim, dropout)

    def forward(self, global_feat: torch.Tensor, tokens: torch.Tensor | None = None) -> PseudoWords:
        b = global_feat.shape[0]
        empty = global_feat.new_zeros(0, self.phi.layers[-1].out_features)
        return PseudoWords(self.phi(global_feat), empty, torch.zeros(b, dtype=torch.long, device=global_feat.device))


def compose_fti(backbone, network, ref, texts) -> torch.Tensor:
    pw = network(ref.pooled, ref.tokens)
    return backbone.encode_prompts([prompts.query_prompt(r, t) for r, t in zip(pw.counts.tolist(), texts)],
                                   prompts.interleave(pw.subject, pw.attributes, pw.counts))


METHOD = Method("fti", FTINetwork, compose_fti, "a photo of * with * ... * but {text}", "fti4cir", "targetpad", True,
                "FTI4CIR (Lin et al., SIGIR 2024)", Training(fti_objective, "fti4cir", "images"))
