"""ONNX export of a trained net as one graph over the raw feature columns.

Inputs are the model's raw columns, one per input: numbers as FLOAT [N, 1], categories as STRING
[N, 1]. Inside the graph: log1p and standard scaling of the numbers, and an `ai.onnx.ml`
`LabelEncoder` mapping each category to its embedding index (unseen values to the reserved 0).
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
    merged = compose.merge_models(pre, core, io_map=[("numeric", "numeric"), ("categorical", "categorical")])
    graph = merged.graph
    graph.node.append(helper.make_node("Sigmoid", ["logit"], ["probability"], name="probability"))
    graph.output.append(helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N"]))
    _dedupe_opsets(merged)
    merged.producer_name = "lakeloop"
    onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, path)
    return path


def _export_net(net: TabularNet, spec: FeatureSpec) -> onnx.ModelProto:
    net = net.eval()
    numeric = torch.zeros(2, len(spec.numeric))
    categorical = torch.zeros(2, len(spec.categorical), dtype=torch.int64)
    buffer = io.BytesIO()
    torch.onnx.export(net, (numeric, categorical), buffer, input_names=["numeric", "categorical"],
                      output_names=["logit"], dynamic_axes={"numeric": {0: "N"}, "categorical": {0: "N"},
                                                            "logit": {0: "N"}},
                      opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    return model


def _preprocessing_graph(spec: FeatureSpec) -> onnx.ModelProto:
    nodes, inits, inputs = [], [], []
    scaled_inputs = []
    inits.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    for column in spec.numeric:
        inputs.append(helper.make_tensor_value_info(column, TensorProto.FLOAT, ["N", 1]))
        if column in spec.log1p:
            nodes += [helper.make_node("Add", [column, "one"], [f"{column}_p1"]),
                      helper.make_node("Log", [f"{column}_p1"], [f"{column}_log"])]
            scaled_inputs.append(f"{column}_log")
        else:
            scaled_inputs.append(column)
    inits += [helper.make_tensor("mean", TensorProto.FLOAT, [len(spec.mean)], list(spec.mean)),
              helper.make_tensor("std", TensorProto.FLOAT, [len(spec.std)], list(spec.std))]
    nodes += [helper.make_node("Concat", scaled_inputs, ["numeric_raw"], axis=1),
              helper.make_node("Sub", ["numeric_raw", "mean"], ["numeric_centered"]),
              helper.make_node("Div", ["numeric_centered", "std"], ["numeric"])]
    codes = []
    for column, vocabulary in zip(spec.categorical, spec.vocabularies, strict=True):
        inputs.append(helper.make_tensor_value_info(column, TensorProto.STRING, ["N", 1]))
        nodes.append(helper.make_node("LabelEncoder", [column], [f"{column}_code"], domain="ai.onnx.ml",
                                      keys_strings=list(vocabulary),
                                      values_int64s=list(range(1, len(vocabulary) + 1)),
                                      default_int64=UNKNOWN))
        codes.append(f"{column}_code")
    nodes.append(helper.make_node("Concat", codes, ["categorical"], axis=1))
    graph = helper.make_graph(nodes, "preprocess", inputs,
                              [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", len(spec.numeric)]),
                               helper.make_tensor_value_info("categorical", TensorProto.INT64,
                                                             ["N", len(spec.categorical)])], inits)
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
