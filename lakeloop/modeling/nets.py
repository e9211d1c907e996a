"""The fraud net: categorical embeddings + an MLP, one logit out. Plain torch, no Lightning."""

from __future__ import annotations

import torch
from torch import nn


class TabularNet(nn.Module):
    """Embeddings for each categorical column, concatenated with the numeric ones, then an MLP.

    No dropout and no batch norm: a 2-process DDP run then matches a 1-process run step for step.

    Args:
        numeric_features: number of numeric inputs (already scaled).
        cardinalities: vocabulary size + 1 (unknown) of each categorical input.
        embedding_dim: width of each embedding.
        hidden: widths of the hidden layers.
    """

    def __init__(self, numeric_features: int, cardinalities: list[int], embedding_dim: int = 8,
                 hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in cardinalities)
        width = numeric_features + embedding_dim * len(cardinalities)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([numeric, *embedded], dim=1)).squeeze(1)
