"""Phi: the MLP that maps an image feature to a pseudo-word token embedding."""

from torch import nn


class Phi(nn.Module):
    """d -> hidden -> hidden -> d_tok with GELU and dropout (SEARLE / FTI4CIR)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dropout: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )

    def forward(self, x):
        return self.layers(x)
