"""Networks: the built-in tabular net, and plug-ins that return an `nn.Module` (plain torch, no Lightning).

The contract every net follows: `forward(numeric, categorical)` with `numeric` float32 [N, F] (the
scaled numbers and missing indicators of `FeatureSpec.encode`) and `categorical` int64 [N, C] (one
index per category feature; 0 = unseen, 1 = missing), returning float [N, K] raw outputs: K = 1 logit
(binary), one logit per class (multiclass), or one standardised value (regression). lakeloop owns the
loss, the metrics, the export and serving around it.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch import nn

from lakeloop.errors import ProjectError
from lakeloop.modeling.features import FeatureSpec
from lakeloop.project import ModelSpec, Project, import_object

ENTRY_POINT_GROUP = "lakeloop.models"


class TabularNet(nn.Module):
    """Embeddings for each categorical column, concatenated with the numeric ones, then an MLP.

    No dropout and no batch norm: a 2-process DDP run then matches a 1-process run step for step.

    Args:
        numeric_features: number of numeric inputs (already scaled).
        cardinalities: vocabulary size + 2 (unknown, missing) of each categorical input.
        embedding_dim: width of each embedding.
        hidden: widths of the hidden layers.
        outputs: width of the raw output.
    """

    def __init__(self, numeric_features: int, cardinalities: list[int], embedding_dim: int = 8,
                 hidden: tuple[int, ...] = (64, 64), outputs: int = 1) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in cardinalities)
        width = numeric_features + embedding_dim * len(cardinalities)
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, outputs))
        self.mlp = nn.Sequential(*layers)
        self.numeric_features, self.embedding_dim = numeric_features, embedding_dim

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = [emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([numeric, *embedded], dim=1))


def build_net(spec: FeatureSpec, model: ModelSpec, project: Project | None = None) -> nn.Module:
    """The project's network for `spec`: the built-in net, or the plug-in's module (checked).

    Raises:
        ProjectError: the plug-in cannot be imported, raises, returns no `nn.Module`, or its output
            on two rows is not [2, K].
    """
    outputs = spec.label.outputs
    if model.plugin is None:
        return TabularNet(spec.numeric_width, spec.cardinalities, model.embedding_dim, tuple(model.hidden), outputs)
    factory = _plugin(model.plugin, project)
    try:
        net = factory(spec, spec.label.task, outputs, **model.options)
    except Exception as exc:  # the plug-in's own failure, reported with its type and message
        raise ProjectError(f"model plug-in {model.plugin!r} raised {type(exc).__name__}: {exc}", problems=[]) from exc
    if not isinstance(net, nn.Module):
        raise ProjectError(f"model plug-in {model.plugin!r} returned {type(net).__name__}, not a torch nn.Module",
                           problems=[])
    numeric = torch.zeros(2, spec.numeric_width)
    categorical = torch.zeros(2, len(spec.categories), dtype=torch.int64)
    try:
        with torch.no_grad():
            out = net.eval()(numeric, categorical)
    except Exception as exc:
        raise ProjectError(f"model plug-in {model.plugin!r}: forward(numeric [2, {spec.numeric_width}], categorical "
                           f"[2, {len(spec.categories)}]) raised {type(exc).__name__}: {exc}", problems=[]) from exc
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, outputs):
        raise ProjectError(f"model plug-in {model.plugin!r} returned output of shape {shape} for 2 rows; a "
                           f"{spec.label.task} net must return [N, {outputs}]", problems=[])
    return net.train()


def _plugin(reference: str, project: Project | None):
    if ":" in reference:
        if project is None:
            raise ProjectError(f"model plug-in {reference!r} needs its project to import from", problems=[])
        return import_object(reference, "model plug-in", project)
    found = [e for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if e.name == reference]
    if not found:
        names = sorted(e.name for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        raise ProjectError(f"model plug-in {reference!r}: no entry point of that name in group {ENTRY_POINT_GROUP} "
                           f"(installed: {', '.join(names) or 'none'}); give `module:function` instead", problems=[])
    try:
        return found[0].load()
    except Exception as exc:
        raise ProjectError(f"model plug-in {reference!r}: loading entry point {found[0].value} raised "
                           f"{type(exc).__name__}: {exc}", problems=[]) from exc
