"""Pic2Word's mapping network (Saito et al., CVPR 2023): global image feature -> one pseudo-word.

``n_layer`` blocks of Linear -> Dropout -> ReLU, then a linear output layer,
as ``IM2TEXT`` in google-research/composed_image_retrieval (``model/model.py``);
the parameter names are the official ones (``layers.0.0.weight``, ``fc_out.bias``)
so a released ``state_dict_img2text`` loads as it is. Context-I2W reuses it
for its global branch.
"""

from __future__ import annotations

import torch
from torch import nn

from zscir.models import prompts
from zscir.models.fti import PseudoWords
from zscir.models.method import Method, Training
from zscir.models.objective import pic2word_objective
from zscir.models.single import single_token


def relu_mlp(input_dim: int, middle_dim: int, n_layer: int, dropout: float) -> nn.Sequential:
    blocks, dim = [], input_dim
    for _ in range(n_layer):
        blocks.append(nn.Sequential(nn.Linear(dim, middle_dim), nn.Dropout(dropout), nn.ReLU()))
        dim = middle_dim
    return nn.Sequential(*blocks)


class Pic2WordNetwork(nn.Module):
    method = "pic2word"

    def __init__(self, embed_dim: int, token_dim: int, vision_width: int | None = None, middle_dim: int = 512,
                 n_layer: int = 2, dropout: float = 0.1):
        super().__init__()
        self.layers = relu_mlp(embed_dim, middle_dim, n_layer, dropout)
        self.fc_out = nn.Linear(middle_dim, token_dim)

    def forward(self, global_feat: torch.Tensor, tokens: torch.Tensor | None = None) -> PseudoWords:
        b = global_feat.shape[0]
        subject = self.fc_out(self.layers(global_feat))
        return PseudoWords(subject, subject.new_zeros(0, subject.shape[1]),
                           torch.zeros(b, dtype=torch.long, device=global_feat.device))


METHOD = Method("pic2word", Pic2WordNetwork, single_token(prompts.comma_query_prompt), "a photo of * , {text}",
                "pic2word", "clip", False, "Pic2Word (Saito et al., CVPR 2023)",
                Training(pic2word_objective, "pic2word", "images"))
