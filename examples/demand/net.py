"""A model plug-in: a residual MLP over the same inputs as lakeloop's built-in net.

Use it from a project's lakeloop.yaml (the module is imported from the project's folder):

    model:
      plugin: net:residual_mlp
      options: {width: 96, blocks: 3}

The contract (docs/projects.md): lakeloop calls `residual_mlp(spec, task, outputs, **options)` with
the fitted `FeatureSpec`, the task name and the output width K; the module's `forward(numeric,
categorical)` takes float32 [N, F] (scaled numbers and missing indicators) and int64 [N, C] (one
index per category: 0 unseen, 1 missing) and returns [N, K] raw outputs. lakeloop owns the loss,
metrics, export and serving around it; the module must be plain torch that the ONNX exporter takes.
"""

from __future__ import annotations

import torch
from torch import nn


def residual_mlp(spec, task: str, outputs: int, width: int = 64, blocks: int = 2, embedding_dim: int = 4) -> nn.Module:
    return ResidualMLP(spec.numeric_width, spec.cardinalities, outputs, width, blocks, embedding_dim)


class ResidualMLP(nn.Module):
    def __init__(self, numbers: int, cardinalities: list[int], outputs: int, width: int, blocks: int,
                 embedding_dim: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in cardinalities)
        self.stem = nn.Linear(numbers + embedding_dim * len(cardinalities), width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                                  nn.Linear(width, width)) for _ in range(blocks))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(width, outputs))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [embedding(categorical[:, i]) for i, embedding in enumerate(self.embeddings)]
        hidden = self.stem(torch.cat([numeric, *embedded], dim=1))
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)
