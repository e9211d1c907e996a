"""ONNX export of a trained net as one graph over the raw feature columns.

Inputs are the model's raw columns, one per input: numbers as FLOAT [N, 1], categories as STRING
[N, 1]. Inside the graph: log1p and standard scaling of the numbers (the scaling folded into the
first layer), and an `ai.onnx.ml` `LabelEncoder` mapping each category to its embedding index
(unseen values to the reserved 0; the embeddings folded into the first layer as well).
Outputs: `logit` [N] and `probability` [N]. A served model therefore needs no training code, and
training/serving skew cannot creep in.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, compose, helper

from lakeloop.modeling.features import UNKNOWN, FeatureSpec
from lakeloop.modeling.nets import TabularNet

OPSET = 17
ML_OPSET = 2
IR_VERSION = 8


def export_onnx(net: TabularNet, spec: FeatureSpec, path: Path) -> Path:
    """Write the raw-feature ONNX model of `net` to `path`."""
    core = _export_net(net, spec)
    pre = _preprocessing_graph(spec)
    io_map = [("numeric", "numeric")] + [(f"{c}_index", f"{c}_index") for c in spec.categorical]
    merged = compose.merge_models(pre, core, io_map=io_map)
    graph = merged.graph
    graph.node.append(helper.make_node("Sigmoid", ["logit"], ["probability"], name="probability"))
    graph.output.append(helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]))
    _dedupe_opsets(merged)
    merged.producer_name = "lakeloop"
    onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, path)
    return path


class _FoldedNet(torch.nn.Module):
    """The trained net rewritten for inference, exactly (up to float rounding):

    - standard scaling is folded into the first layer's numeric weights: W·((x - m) / s) + b =
      (W / s)·x + (b - W·(m / s));
    - each embedding is folded into the first layer too: its table times the first layer's columns
      for that embedding gives a [vocabulary, hidden] table, so an embedding lookup, a concat and a
      third of the first matrix product become one Gather and an Add.
    """

    def __init__(self, net: TabularNet, spec: FeatureSpec) -> None:
        super().__init__()
        linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
        first, n = linears[0], len(spec.numeric)
        mean, std = torch.tensor(spec.mean, dtype=torch.float64), torch.tensor(spec.std, dtype=torch.float64)
        w = first.weight.detach().double()
        w_numeric = w[:, :n] / std
        self.numeric = torch.nn.Linear(n, first.out_features)
        with torch.no_grad():
            self.numeric.weight.copy_(w_numeric.float())
            self.numeric.bias.copy_((first.bias.detach().double() - w[:, :n] @ (mean / std)).float())
        tables, offset = [], n
        for embedding in net.embeddings:
            d = embedding.embedding_dim
            tables.append(torch.nn.Parameter((embedding.weight.detach().double() @ w[:, offset:offset + d].T).float(),
                                             requires_grad=False))
            offset += d
        self.tables = torch.nn.ParameterList(tables)
        self.rest = torch.nn.Sequential(*list(net.mlp)[1:])  # the ReLU after the first layer, and the rest

    def forward(self, numeric: torch.Tensor, *codes: torch.Tensor) -> torch.Tensor:
        hidden = self.numeric(numeric)
        for table, code in zip(self.tables, codes, strict=True):
            hidden = hidden + table[code]
        return self.rest(hidden).squeeze(1)


def _export_net(net: TabularNet, spec: FeatureSpec) -> onnx.ModelProto:
    folded = _FoldedNet(net.eval(), spec).eval()
    numeric = torch.zeros(2, len(spec.numeric))
    codes = tuple(torch.zeros(2, dtype=torch.int64) for _ in spec.categorical)
    names = [f"{c}_index" for c in spec.categorical]
    buffer = io.BytesIO()
    torch.onnx.export(folded, (numeric, *codes), buffer, input_names=["numeric", *names], output_names=["logit"],
                      dynamic_axes={"numeric": {0: "N"}, "logit": {0: "N"}, **{k: {0: "N"} for k in names}},
                      opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    return model


def _preprocessing_graph(spec: FeatureSpec) -> onnx.ModelProto:
    nodes, inits, inputs = [], [], []
    numeric_parts = []
    inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    for column in spec.numeric:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.FLOAT, ["N", 1]))
        if column in spec.log1p:
            nodes += [helper.make_node("Add", [column, "one"], [f"{column}_p1"]),
                      helper.make_node("Log", [f"{column}_p1"], [f"{column}_log"])]
            numeric_parts.append(f"{column}_log")
        else:
            numeric_parts.append(column)
    nodes.append(helper.make_node("Concat", numeric_parts, ["numeric"], axis=1))  # scaling: in the net
    inits.append(helper.make_tensor("flat", TensorProto.INT64, [1], [-1]))
    outputs = [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", len(spec.numeric)])]
    for column, vocabulary in zip(spec.categorical, spec.vocabularies, strict=True):
        inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, ["N", 1]))
        nodes += [helper.make_node("LabelEncoder", [column], [f"{column}_code"], domain="ai.onnx.ml",
                                   keys_strings=list(vocabulary), values_int64s=list(range(1, len(vocabulary) + 1)),
                                   default_int64=UNKNOWN),
                  helper.make_node("Reshape", [f"{column}_code", "flat"], [f"{column}_index"])]
        outputs.append(helper.make_tensor_value_info(f"{column}_index", TensorProto.INT64, ["N"]))
    graph = helper.make_graph(nodes, "preprocess", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                             ir_version=IR_VERSION)


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """merge_models can write the default domain twice; the quantizer rejects that."""
    seen: dict[str, int] = {}
    for opset in model.opset_import:
        seen[opset.domain] = max(seen.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in seen.items())


def onnx_inputs(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Raw rows as the exported model's named inputs."""
    feeds = {c: frame[c].to_numpy(dtype=np.float32).reshape(-1, 1) for c in spec.numeric}
    feeds.update({c: frame[c].astype(str).to_numpy(dtype=object).reshape(-1, 1) for c in spec.categorical})
    return feeds
