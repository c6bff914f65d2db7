"""FineCIR's scene-graph side: per entity a small graph of phrases, and the graph-attention layer over it.

The graph (from zscir's parser, :mod:`zscir.text`; spaCy/SceneGraphParser when installed)
-----------------------------------------------------------------------------------------
For each entity the parser finds in the modification text (first named first, at most
``max_entities``) one graph: node 0 is the entity ("circle"), then one node per attribute
word ("large", "red": the entity-attribute edges) and one per relation of the entity
("make blue", "next to star": the entity-relation-entity / entity-relation-value edges),
at most ``max_nodes`` nodes in all. Edges join node 0 to every other node, both ways; every
node has its self-loop. After the graph attention, node 0's output is the entity token that
FineCIR appends to the Q-Former's learned query tokens.

FineCIR's published code (github.com/SDU-L/FineCIR, code/lavis/models/blip2_models/FineCIR.py,
``extract_text_fea_token``) shapes the input the same way -- per entity a node list
"entity, attributes, objects" with an adjacency matrix, node 0 taken as the entity token --
but its ``scene_graph_utils`` module (which builds the lists and embeds the phrases) is not in
the repository; the node lists above and the phrase embedding (the Q-Former's own text [CLS]
hidden state, :mod:`zscir.models.blip2_heads.qformer`) are zscir's reading of the paper.

The graph attention (FineCIR's ``graph_attention.py``, after GATv2, Brody et al. 2021)
--------------------------------------------------------------------------------------
For nodes ``x_i`` (width d, ``heads`` heads of width d/heads), per head h:

    e_ij^h = a_h . LeakyReLU_0.2((W1 x_i)_h + (W2 x_j)_h) + b_h      for j adjacent to i
    alpha_ij^h = softmax_j e_ij^h
    out_i = ReLU(LayerNorm(W1 x_i + concat_h sum_j alpha_ij^h (Wv x_j)_h))

FineCIR: one layer, 16 heads, d = the Q-Former width (768), no dropout, the residual form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zscir.text.graph import ParsedText


@dataclass(frozen=True)
class EntityGraph:
    """One entity's node phrases (node 0: the entity) and its edges (pairs of node indices, both ways, self-loops)."""

    nodes: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]


def entity_graphs(parsed: ParsedText, max_entities: int, max_nodes: int) -> list[EntityGraph]:
    """The per-entity graphs of one parsed text (see the module doc); [] for a text without entities."""
    graphs = []
    for index, entity in enumerate(parsed.entities[:max_entities]):
        nodes = [entity.noun, *entity.attributes]
        for rel in parsed.relations_of(index):
            other = parsed.entities[rel.object].noun if rel.object is not None else rel.value
            nodes.append(f"{rel.predicate} {other}" if other else rel.predicate)
        nodes = nodes[:max_nodes]
        edges = [(k, k) for k in range(len(nodes))]
        edges += [pair for k in range(1, len(nodes)) for pair in ((0, k), (k, 0))]
        graphs.append(EntityGraph(tuple(nodes), tuple(edges)))
    return graphs


def pack_graphs(graph_lists: list[list[EntityGraph]], phrase_index: dict[str, int], max_nodes: int):
    """Batch the graphs: (node phrase ids [B, E, N] with -1 = none, adjacency [B, E, N, N] bool, entity mask [B, E])."""
    e = max(1, max((len(g) for g in graph_lists), default=0))
    n = max(1, min(max_nodes, max((len(x.nodes) for g in graph_lists for x in g), default=1)))
    ids = torch.full((len(graph_lists), e, n), -1, dtype=torch.long)
    adjacency = torch.zeros(len(graph_lists), e, n, n, dtype=torch.bool)
    for b, graphs in enumerate(graph_lists):
        for k, graph in enumerate(graphs):
            ids[b, k, :len(graph.nodes)] = torch.tensor([phrase_index[p] for p in graph.nodes])
            for i, j in graph.edges:
                adjacency[b, k, i, j] = True
    return ids, adjacency, ids[:, :, 0] >= 0


class GraphAttention(nn.Module):
    """One GATv2-style layer over a batch of small graphs: x [G, N, d], adjacency [G, N, N] bool -> [G, N, d]."""

    def __init__(self, width: int, heads: int = 16, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"graph attention: width {width} is not a multiple of {heads} heads")
        self.heads = heads
        self.source = nn.Linear(width, width)      # W1 (also the residual path)
        self.neighbour = nn.Linear(width, width)   # W2
        self.value = nn.Linear(width, width)       # Wv
        self.dropout = nn.Dropout(dropout)
        self.score = nn.Parameter(torch.empty(heads, width // heads))   # a_h
        self.score_bias = nn.Parameter(torch.empty(heads))              # b_h
        self.norm = nn.LayerNorm(width)
        bound = 1 / math.sqrt(width // heads)
        nn.init.uniform_(self.score, -bound, bound)
        nn.init.uniform_(self.score_bias, -bound, bound)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        g, n, d = x.shape
        h, w = self.heads, d // self.heads
        src = self.source(x)
        a = src.view(g, n, 1, h, w)
        b = self.neighbour(x).view(g, 1, n, h, w)
        scores = (F.leaky_relu(a + b, 0.2) * self.score).sum(-1) + self.score_bias     # [G, N, N, H]
        scores = scores.masked_fill(~adjacency.unsqueeze(-1), float("-inf"))
        alpha = torch.softmax(scores, dim=2).nan_to_num(0.0)                           # a padding row: all -inf
        values = self.dropout(self.value(x)).view(g, n, h, w)
        mixed = torch.einsum("gijh,gjhw->gihw", alpha, values).reshape(g, n, d)
        return F.relu(self.norm(src + mixed))
