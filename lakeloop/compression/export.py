"""ONNX export of a trained net as one graph over the project's raw feature columns.

Inputs, one per feature: numbers and booleans as FLOAT [N, 1] (NaN = missing), categories as STRING
[N, 1] (empty string = missing). Inside the graph, exactly as `FeatureSpec.encode`: missing numbers
are imputed and flagged, clip and log1p applied, then standard scaling; categories go through an
`ai.onnx.ml` `LabelEncoder` (unseen → 0, missing → 1). For the built-in net the scaling and the
embeddings are folded into its first layer. Outputs, fixed per task:

- binary: `probability` FLOAT [N, 1] (of the positive class) and `label` INT64 [N, 1] (1 = positive);
- multiclass: `probabilities` FLOAT [N, C] in the declared class order and `label` INT64 [N, 1];
- regression: `prediction` FLOAT [N, 1] in the label's own units (standardisation and log1p undone).

The class names, the task and the outputs are in the model's metadata (`lakeloop.*` properties).
A served model therefore needs no training code, and training/serving skew cannot creep in.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from onnx import TensorProto, compose, helper

from lakeloop.modeling.features import MISSING, UNKNOWN, FeatureSpec, boolean_values, category_strings
from lakeloop.modeling.nets import TabularNet

OPSET = 17
ML_OPSET = 2
IR_VERSION = 8
OUTPUTS = {"binary": ("probability", "label"), "multiclass": ("probabilities", "label"),
           "regression": ("prediction",)}


def primary_output(task: str) -> str:
    """The output metrics and drift read: the positive-class probability, class probabilities, the prediction."""
    return OUTPUTS[task][0]


def export_onnx(net: torch.nn.Module, spec: FeatureSpec, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the raw-feature ONNX model of `net` to `path`."""
    folded = isinstance(net, TabularNet)
    core = _export_net(net, spec, folded)
    wired = {i.name for i in core.graph.input}  # the exporter drops an input the net never reads
    pre = _preprocessing_graph(spec, folded, "categorical" in wired)
    names = ["numeric"] + ([f"{c.name}_index" for c in spec.categories] if folded else ["categorical"])
    merged = compose.merge_models(pre, core, io_map=[(n, n) for n in names if n in wired])
    _postprocess(merged.graph, spec)
    _dedupe_opsets(merged)
    merged.producer_name = "lakeloop"
    properties = {"lakeloop.task": spec.label.task, "lakeloop.outputs": json.dumps(list(OUTPUTS[spec.label.task])),
                  "lakeloop.label": spec.label.column, "lakeloop.classes": json.dumps(list(spec.label.classes)),
                  # every input takes a missing value, handled in the graph as in training (NaN / "")
                  "lakeloop.nullable": json.dumps([n.name for n in spec.numbers] + [c.name for c in spec.categories]),
                  **(metadata or {})}
    onnx.helper.set_model_props(merged, properties)
    onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, path)
    return path


class _FoldedNet(torch.nn.Module):
    """The built-in net rewritten for inference, exactly (up to float rounding):

    - standard scaling is folded into the first layer's numeric weights: W·((x - m) / s) + b =
      (W / s)·x + (b - W·(m / s));
    - each embedding is folded into the first layer too: its table times the first layer's columns
      for that embedding gives a [vocabulary, hidden] table, so an embedding lookup, a concat and a
      third of the first matrix product become one Gather and an Add.
    """

    def __init__(self, net: TabularNet, spec: FeatureSpec) -> None:
        super().__init__()
        linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
        first, n = linears[0], spec.numeric_width
        mean, std = (torch.tensor(v, dtype=torch.float64) for v in _scaling(spec))
        w = first.weight.detach().double()
        self.numeric = torch.nn.Linear(n, first.out_features)
        with torch.no_grad():
            self.numeric.weight.copy_((w[:, :n] / std).float())
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
        return self.rest(hidden)


def _scaling(spec: FeatureSpec) -> tuple[list[float], list[float]]:
    """Mean and std of each numeric column (indicators: 0 and 1, i.e. left as they are)."""
    mean, std = [], []
    for n in spec.numbers:
        mean.append(n.mean)
        std.append(n.std)
        if n.indicator:
            mean.append(0.0)
            std.append(1.0)
    return mean, std


def _export_net(net: torch.nn.Module, spec: FeatureSpec, folded: bool) -> onnx.ModelProto:
    numeric = torch.zeros(2, spec.numeric_width)
    if folded:
        module: torch.nn.Module = _FoldedNet(net.eval(), spec).eval()
        args = (numeric, *(torch.zeros(2, dtype=torch.int64) for _ in spec.categories))
        names = ["numeric", *(f"{c.name}_index" for c in spec.categories)]
    else:
        module = net.eval()
        args = (numeric, torch.zeros(2, len(spec.categories), dtype=torch.int64))
        names = ["numeric", "categorical"]
    buffer = io.BytesIO()
    torch.onnx.export(module, args, buffer, input_names=names, output_names=["raw"],
                      dynamic_axes={**{k: {0: "N"} for k in names}, "raw": {0: "N"}}, opset_version=OPSET,
                      dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    return model


def _preprocessing_graph(spec: FeatureSpec, folded: bool, empty_categorical: bool = False) -> onnx.ModelProto:
    nodes, inits, inputs, parts = [], [], [], []
    inits += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
              helper.make_tensor("flat", TensorProto.INT64, [1], [-1])]
    parts += _numbers(spec, nodes, inits, inputs)
    width = spec.numeric_width
    if parts:
        target = "numeric" if folded else "numeric__raw"
        nodes.append(helper.make_node("Concat", parts, [target], axis=1))
        if not folded:  # a plug-in takes scaled inputs; the built-in net has the scaling folded in
            mean, std = _scaling(spec)
            inits += [helper.make_tensor("numeric__mean", TensorProto.FLOAT, [width], mean),
                      helper.make_tensor("numeric__std", TensorProto.FLOAT, [width], std)]
            nodes += [helper.make_node("Sub", ["numeric__raw", "numeric__mean"], ["numeric__centred"]),
                      helper.make_node("Div", ["numeric__centred", "numeric__std"], ["numeric"])]
    else:  # no numbers: an empty [N, 0] matrix shaped after the first category input
        first = spec.categories[0].name
        inits.append(helper.make_tensor("empty_shape_tail", TensorProto.INT64, [1], [0]))
        nodes += [helper.make_node("Shape", [first], [f"{first}__shape"], end=1),
                  helper.make_node("Concat", [f"{first}__shape", "empty_shape_tail"], ["numeric__shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["numeric__shape"], ["numeric"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))]
    outputs = [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", width])]
    indices = []
    for c in spec.categories:
        inputs.append(helper.make_tensor_value_info(c.name, TensorProto.STRING, ["N", 1]))
        keys = [*c.vocabulary, ""]
        values = [*range(2, len(c.vocabulary) + 2), MISSING]
        nodes += [helper.make_node("LabelEncoder", [c.name], [f"{c.name}__code"], domain="ai.onnx.ml",
                                   keys_strings=keys, values_int64s=values, default_int64=UNKNOWN),
                  helper.make_node("Reshape", [f"{c.name}__code", "flat"], [f"{c.name}_index"])]
        indices.append(f"{c.name}_index")
    if folded:
        outputs += [helper.make_tensor_value_info(i, TensorProto.INT64, ["N"]) for i in indices]
    elif not spec.categories and empty_categorical:  # a plug-in that reads its (empty) category matrix
        inits.append(helper.make_tensor("no_columns", TensorProto.INT64, [1], [0]))
        nodes += [helper.make_node("Shape", ["numeric"], ["categorical__rows"], end=1),
                  helper.make_node("Concat", ["categorical__rows", "no_columns"], ["categorical__shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["categorical__shape"], ["categorical"],
                                   value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))]
        outputs.append(helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", 0]))
    elif spec.categories:
        inits.append(helper.make_tensor("column_axis", TensorProto.INT64, [1], [1]))
        nodes += [helper.make_node("Unsqueeze", [i, "column_axis"], [f"{i}__col"]) for i in indices]
        nodes.append(helper.make_node("Concat", [f"{i}__col" for i in indices], ["categorical"], axis=1))
        outputs.append(helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", len(indices)]))
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, "preprocess", inputs, outputs, [t for t in inits if t.name in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                             ir_version=IR_VERSION)


def _numbers(spec: FeatureSpec, nodes: list, inits: list, inputs: list) -> list[str]:
    """The numeric features as one [N, K] matrix, each step one vectorised node whatever K is (per-column
    constants as [K] vectors): NaN → 0, clip, log1p, NaN → the training fill, then the missing
    indicators, interleaved after their columns in `FeatureSpec.encode`'s order. (One node chain per
    feature made a 64-feature model spend 300 µs a row in ORT's per-node overhead.)"""
    numbers = spec.numbers
    if not numbers:
        return []
    k = len(numbers)
    for n in numbers:
        inputs.append(helper.make_tensor_value_info(n.name, TensorProto.FLOAT, ["N", 1]))
    big = float(np.finfo(np.float32).max)

    def vector(name: str, values: list[float]) -> str:
        inits.append(helper.make_tensor(f"numbers__{name}", TensorProto.FLOAT, [k], values))
        return f"numbers__{name}"

    nodes += [helper.make_node("Concat", [n.name for n in numbers], ["numbers__raw"], axis=1),
              helper.make_node("IsNaN", ["numbers__raw"], ["numbers__nan"]),
              helper.make_node("Where", ["numbers__nan", "zero", "numbers__raw"], ["numbers__v0"])]
    value = "numbers__v0"  # no NaN past this point
    if any(n.clip is not None for n in numbers):
        low = vector("lo", [n.clip[0] if n.clip is not None else -big for n in numbers])
        high = vector("hi", [n.clip[1] if n.clip is not None else big for n in numbers])
        nodes += [helper.make_node("Max", [value, low], ["numbers__above"]),
                  helper.make_node("Min", ["numbers__above", high], ["numbers__clip"])]
        value = "numbers__clip"
    if any(n.log1p for n in numbers):
        inits.append(helper.make_tensor("numbers__log_mask", TensorProto.BOOL, [k], [n.log1p for n in numbers]))
        nodes += [helper.make_node("Max", [value, "zero"], ["numbers__pos"]),
                  helper.make_node("Add", ["numbers__pos", "one"], ["numbers__p1"]),
                  helper.make_node("Log", ["numbers__p1"], ["numbers__log"]),
                  helper.make_node("Where", ["numbers__log_mask", "numbers__log", value], ["numbers__logged"])]
        value = "numbers__logged"
    fill = vector("fill", [n.fill for n in numbers])
    nodes.append(helper.make_node("Where", ["numbers__nan", fill, value], ["numbers__filled"]))
    flagged = [i for i, n in enumerate(numbers) if n.indicator]
    if not flagged:
        return ["numbers__filled"]
    # [filled (K) | missing of the flagged (I)] → the encode order: each flagged column followed by its indicator
    order, position = [], k
    for i, n in enumerate(numbers):
        order.append(i)
        if n.indicator:
            order.append(position)
            position += 1
    inits += [helper.make_tensor("numbers__flagged", TensorProto.INT64, [len(flagged)], flagged),
              helper.make_tensor("numbers__order", TensorProto.INT64, [len(order)], order)]
    nodes += [helper.make_node("Gather", ["numbers__nan", "numbers__flagged"], ["numbers__nan_flagged"], axis=1),
              helper.make_node("Cast", ["numbers__nan_flagged"], ["numbers__missing"], to=TensorProto.FLOAT),
              helper.make_node("Concat", ["numbers__filled", "numbers__missing"], ["numbers__both"], axis=1),
              helper.make_node("Gather", ["numbers__both", "numbers__order"], ["numbers__encoded"], axis=1)]
    return ["numbers__encoded"]


def _postprocess(graph: onnx.GraphProto, spec: FeatureSpec) -> None:
    """Replace the net's `raw` output with the task's outputs."""
    del graph.output[:]
    label = spec.label
    add, out = graph.node.append, graph.output.append
    if label.task == "binary":
        graph.initializer.append(helper.make_tensor("post__half", TensorProto.FLOAT, [], [0.5]))
        add(helper.make_node("Sigmoid", ["raw"], ["probability"], name="probability"))
        add(helper.make_node("GreaterOrEqual", ["probability", "post__half"], ["post__positive"]))
        add(helper.make_node("Cast", ["post__positive"], ["label"], to=TensorProto.INT64, name="label"))
        out(helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1]))
        out(helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]))
    elif label.task == "multiclass":
        add(helper.make_node("Softmax", ["raw"], ["probabilities"], axis=1, name="probabilities"))
        add(helper.make_node("ArgMax", ["raw"], ["label"], axis=1, keepdims=1, name="label"))
        out(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(label.classes)]))
        out(helper.make_tensor_value_info("label", TensorProto.INT64, ["N", 1]))
    else:
        graph.initializer.extend([helper.make_tensor("post__std", TensorProto.FLOAT, [], [label.std]),
                                  helper.make_tensor("post__mean", TensorProto.FLOAT, [], [label.mean])])
        add(helper.make_node("Mul", ["raw", "post__std"], ["post__scaled"]))
        final = "prediction" if label.transform == "none" else "post__log"
        add(helper.make_node("Add", ["post__scaled", "post__mean"], [final]))
        if label.transform == "log1p":
            graph.initializer.append(helper.make_tensor("post__one", TensorProto.FLOAT, [], [1.0]))
            add(helper.make_node("Exp", ["post__log"], ["post__exp"]))
            add(helper.make_node("Sub", ["post__exp", "post__one"], ["prediction"], name="prediction"))
        out(helper.make_tensor_value_info("prediction", TensorProto.FLOAT, ["N", 1]))


def _dedupe_opsets(model: onnx.ModelProto) -> None:
    """merge_models can write the default domain twice; the quantizer rejects that."""
    seen: dict[str, int] = {}
    for opset in model.opset_import:
        seen[opset.domain] = max(seen.get(opset.domain, 0), opset.version)
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in seen.items())


def onnx_inputs(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Raw rows as the exported model's named inputs (NaN and "" for missing values)."""
    feeds = {}
    for n in spec.numbers:
        column = frame[n.name]
        values = boolean_values(column, n.name) if n.boolean else column.astype("float64").to_numpy()
        feeds[n.name] = values.astype(np.float32).reshape(-1, 1)
    for c in spec.categories:
        feeds[c.name] = category_strings(frame[c.name]).to_numpy(dtype=object).reshape(-1, 1)
    return feeds
