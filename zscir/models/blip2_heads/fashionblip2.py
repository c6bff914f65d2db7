"""FashionBLIP-2 (Gardères et al., 2025, "FACap: A Large-scale Fashion Dataset for Fine-grained Composed Image
Retrieval", arXiv 2507.07135): BLIP-2 fine-tuned "with lightweight adapters and multi-head query-candidate
matching" (the paper's abstract), on a transformers BLIP-2.

What the sources available to zscir state is that sentence; where the adapters sit, their width
and the number of matching heads were not found (the paper's method section and code were not
in the searchable sources). zscir's reading, every part a recipe field (``recipes/fashionblip2.json``):

- **adapters**: a bottleneck adapter (Houlsby et al., 2019: LayerNorm-free down-projection ->
  GELU -> up-projection, added to its input) on the output of every Q-Former layer, for the
  query and the text positions alike; the up-projection starts at zero, so an untrained
  FashionBLIP-2 is exactly its BLIP-2. The adapters act only inside this head's own passes
  (forward hooks installed for the pass and removed after): the BLIP-2 object stays usable
  as the plain backbone.
- **frozen**: every BLIP-2 weight (vision encoder, Q-Former, query tokens, projections);
  trained: the adapters and the temperature.
- **multi-head query-candidate matching**: the composed feature and every candidate query
  token (both in BLIP-2's projected space, D) are cut into ``match_heads`` slices of D/H; each
  slice is L2-normalised and each head picks its own best candidate query token; the score is
  the mean over heads of those cosines. One head is BLIP-2's ITC rule (best query token).

Composition as SPRC / FineCIR compose (:mod:`zscir.models.blip2_heads.qformer`): query tokens and
text together over the reference image, the text [CLS] output is the query.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from zscir.models.blip2_heads import qformer


class Adapter(nn.Module):
    """x + up(GELU(down(x))), up initialised to zero."""

    def __init__(self, width: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(F.gelu(self.down(x)))


class FashionBlip2(nn.Module):
    """FashionBLIP-2 over ``model`` (a ``Blip2ForImageTextRetrieval``, frozen); only adapters and temperature train."""

    family = "blip2"

    def __init__(self, model, tokenizer, parser=None, adapter_bottleneck: int = 64, match_heads: int = 4,
                 max_text_tokens: int = 128, temperature: float = 0.07, **_unused):
        super().__init__()
        object.__setattr__(self, "blip2", model)   # not a submodule: frozen, and not saved with the head
        model.requires_grad_(False)
        width = model.config.qformer_config.hidden_size
        embed = model.vision_projection.out_features
        if embed % match_heads:
            raise ValueError(f"FashionBLIP-2: {match_heads} matching heads do not divide the embedding width {embed}")
        self.adapters = nn.ModuleList(Adapter(width, adapter_bottleneck) for _ in model.qformer.encoder.layer)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.match_heads, self.max_text_tokens, self.tokenizer = match_heads, max_text_tokens, tokenizer

    @property
    def device(self) -> torch.device:
        return self.temperature.device

    @contextmanager
    def adapted(self):
        """The Q-Former with this head's adapters on its layers' outputs, for the duration of the block."""
        def hook(adapter):
            return lambda module, args, output: adapter(output) if torch.is_tensor(output) else \
                (adapter(output[0]), *output[1:])
        handles = [layer.register_forward_hook(hook(a))
                   for layer, a in zip(self.blip2.qformer.encoder.layer, self.adapters)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def compose(self, image_hidden: torch.Tensor, texts: list[str]) -> torch.Tensor:
        ids, attention = qformer.tokenize(self.tokenizer, texts, self.max_text_tokens, self.device)
        with self.adapted():
            return qformer.compose(self.blip2, image_hidden, ids, attention)

    def candidates(self, image_hidden: torch.Tensor) -> torch.Tensor:
        with self.adapted():
            return qformer.candidate_tokens(self.blip2, image_hidden)

    def scores(self, composed: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        h = self.match_heads
        c = F.normalize(composed.unflatten(-1, (h, -1)), dim=-1)              # [B, H, D/H]
        t = F.normalize(candidates.unflatten(-1, (h, -1)), dim=-1)            # [T, Q, H, D/H]
        return torch.einsum("bhd,tqhd->bthq", c, t).amax(-1).mean(-1)

    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temperature.clamp(1e-3, 0.5)   # BLIP-2's clamp of its learned temperature
