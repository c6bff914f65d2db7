"""FineCIR as published (Li et al., 2025, "FineCIR: Explicit Parsing of Fine-Grained Modification Semantics
for Composed Image Retrieval", arXiv 2503.21309; code github.com/SDU-L/FineCIR), on a transformers BLIP-2.

1. The modification text's scene graph (:func:`~zscir.models.blip2_heads.graph.entity_graphs`):
   per entity a graph of its noun, attribute words and relations.
2. Every node phrase is embedded by the Q-Former's text branch ([CLS] hidden state, width W);
   one graph-attention layer (:class:`~zscir.models.blip2_heads.graph.GraphAttention`, 16 heads)
   runs over each entity's graph; node 0's output is the entity token.
3. The entity tokens are appended to the 32 learned query tokens; query tokens, entity tokens
   and the text go through the Q-Former together over the reference image
   (:func:`~zscir.models.blip2_heads.qformer.compose`); padding entities are masked out.
4. Candidates: the query tokens over the candidate image; score = the best query token's
   cosine; loss = InfoNCE over the batch on score / temperature (learned, initial 0.07).

Trained: the Q-Former (its layers, embeddings, query tokens), both projections, the graph
attention and the temperature; the vision encoder is frozen (FineCIR.py: ``freeze_vit=True``).

Where zscir differs from the published code, on purpose:

- the composed feature is the text [CLS] output, at position (queries + entities); the
  published ``extract_retrieval_compose`` reads position 32, which once entity tokens are
  appended is the first entity token's output, not the text's;
- padding entity slots are masked in the attention (the published code attends to them);
- the scene-graph builder and phrase embedding are zscir's (the published ``scene_graph_utils``
  is absent from the repository).

Hyper-parameters: the recipe ``recipes/finecir.json`` (sources there).
"""

from __future__ import annotations

import torch
from torch import nn

from zscir.models.blip2_heads import qformer
from zscir.models.blip2_heads.graph import GraphAttention, entity_graphs, pack_graphs


class FineCIRBlip2(nn.Module):
    """FineCIR's head over ``model`` (a ``Blip2ForImageTextRetrieval``); its trainable BLIP-2 parts are submodules."""

    family = "blip2"

    def __init__(self, model, tokenizer, parser, graph_heads: int = 16, max_entities: int = 6, max_nodes: int = 8,
                 max_text_tokens: int = 128, temperature: float = 0.07, **_unused):
        super().__init__()
        object.__setattr__(self, "blip2", model)   # not a submodule: its frozen vision encoder stays out of state_dict
        for name in ("qformer", "embeddings", "vision_projection", "text_projection"):
            setattr(self, name, getattr(model, name).requires_grad_(True))   # a loaded BLIP-2 comes frozen
        self.query_tokens = model.query_tokens.requires_grad_(True)
        self.graph = GraphAttention(model.config.qformer_config.hidden_size, graph_heads)
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))
        self.tokenizer, self.parser = tokenizer, parser
        self.max_entities, self.max_nodes, self.max_text_tokens = max_entities, max_nodes, max_text_tokens
        self._graphs: dict[str, list] = {}
        model.vision_model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.query_tokens.device

    def graphs_of(self, texts: list[str]) -> list[list]:
        for t in texts:
            if t not in self._graphs:
                self._graphs[t] = entity_graphs(self.parser.parse(t), self.max_entities, self.max_nodes)
        return [self._graphs[t] for t in texts]

    def entity_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, E, W] entity tokens after the graph attention, [B, E] mask of real entities)."""
        graph_lists = self.graphs_of(texts)
        phrases = sorted({p for gs in graph_lists for g in gs for p in g.nodes})
        index = {p: k for k, p in enumerate(phrases)}
        ids, adjacency, entity_mask = pack_graphs(graph_lists, index, self.max_nodes)
        width = self.query_tokens.shape[-1]
        table = torch.zeros(len(phrases) + 1, width, device=self.device)   # the last row: padding nodes
        if phrases:
            table[:-1] = qformer.text_hidden(self.blip2, *qformer.tokenize(self.tokenizer, phrases, 32, self.device))
        b, e, n = ids.shape
        nodes = table[ids.to(self.device)].view(b * e, n, width)            # -1 -> the padding row
        out = self.graph(nodes, adjacency.to(self.device).view(b * e, n, n))
        return out[:, 0].view(b, e, width), entity_mask.to(self.device)

    def compose(self, image_hidden: torch.Tensor, texts: list[str]) -> torch.Tensor:
        entities, mask = self.entity_tokens(texts)
        ids, attention = qformer.tokenize(self.tokenizer, texts, self.max_text_tokens, self.device)
        return qformer.compose(self.blip2, image_hidden, ids, attention, entities, mask)

    def candidates(self, image_hidden: torch.Tensor) -> torch.Tensor:
        return qformer.candidate_tokens(self.blip2, image_hidden)

    def scores(self, composed: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return qformer.best_token_scores(composed, candidates)

    def logit_scale(self) -> torch.Tensor:
        return 1.0 / self.temperature.clamp(1e-3, 0.5)   # BLIP-2's clamp of its learned temperature
