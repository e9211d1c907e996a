"""ONNX export of a trained net as one graph over the project's raw feature columns.

Inputs, at most two, each packing the features of one type in the project's order (a graph input
costs ONNX Runtime ~2 µs to feed, so one per feature made a 64-feature model spend most of its time
being fed): `numbers` FLOAT [N, K] for numbers and booleans (NaN = missing) and `categories` STRING
[N, C] (empty string = missing). The metadata property `lakeloop.inputs` names the columns each
packs, `{"numbers": [...], "categories": [...]}`: the model server offers every column as its own
V2 input and packs them (`lakeloop.packing`). Inside the graph, exactly as `FeatureSpec.encode`: missing numbers
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
from lakeloop.packing import INPUTS_KEY, pack

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
    merged = compose.merge_models(pre, core, io_map=[(n, n) for n in ("numeric", "categorical") if n in wired])
    _postprocess(merged.graph, spec)
    _dedupe_opsets(merged)
    merged.producer_name = "lakeloop"
    properties = {"lakeloop.task": spec.label.task, "lakeloop.outputs": json.dumps(list(OUTPUTS[spec.label.task])),
                  "lakeloop.label": spec.label.column, "lakeloop.classes": json.dumps(list(spec.label.classes)),
                  # every input takes a missing value, handled in the graph as in training (NaN / "")
                  "lakeloop.nullable": json.dumps([n.name for n in spec.numbers] + [c.name for c in spec.categories]),
                  INPUTS_KEY: json.dumps(packed_columns(spec)),
                  **(metadata or {})}
    onnx.helper.set_model_props(merged, properties)
    onnx.checker.check_model(merged, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(merged, path)
    return path


class _FoldedNet(torch.nn.Module):
    """The built-in net rewritten for inference, exactly (up to float rounding), so that the graph around
    it needs as few nodes as possible (at one row, ONNX Runtime's cost is per node, not per value):

    - the numeric input is the wide matrix `_wide_numbers` builds ([values | log1p values | missing
      flags], K columns each): the first layer takes each column from the part its feature uses, with
      zero weights elsewhere, so no per-column selection is needed in the graph;
    - standard scaling is folded into those weights: W·((x - m) / s) + b = (W / s)·x + (b - W·(m / s));
    - each embedding is folded into the first layer too (its table times the first layer's columns for
      it gives a [vocabulary, hidden] table), and the tables of all categories are stacked into one, so
      every category is one Gather over offset codes and one sum: an embedding lookup, a concat and a
      third of the first matrix product become two nodes whatever the number of categories.
    """

    def __init__(self, net: TabularNet, spec: FeatureSpec) -> None:
        super().__init__()
        linears = [m for m in net.mlp if isinstance(m, torch.nn.Linear)]
        first, k = linears[0], len(spec.numbers)
        w = first.weight.detach().double()
        parts = _wide_parts(spec)
        weight = torch.zeros(first.out_features, k * len(parts), dtype=torch.float64)
        bias = first.bias.detach().double().clone()
        column = 0  # in FeatureSpec.encode's order: each number, then its missing flag if it has one
        for i, n in enumerate(spec.numbers):
            part = parts.index("log" if n.log1p else "value")
            weight[:, part * k + i] = w[:, column] / n.std
            bias -= w[:, column] * (n.mean / n.std)
            column += 1
            if n.indicator:
                weight[:, parts.index("missing") * k + i] = w[:, column]
                column += 1
        self.numeric = torch.nn.Linear(weight.shape[1], first.out_features)
        with torch.no_grad():
            self.numeric.weight.copy_(weight.float())
            self.numeric.bias.copy_(bias.float())
        tables, offset = [], spec.numeric_width
        for embedding in net.embeddings:
            d = embedding.embedding_dim
            tables.append(embedding.weight.detach().double() @ w[:, offset:offset + d].T)
            offset += d
        self.table = torch.nn.Parameter(torch.cat(tables).float(), requires_grad=False) if tables else None
        self.rest = torch.nn.Sequential(*list(net.mlp)[1:])  # the ReLU after the first layer, and the rest

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.numeric(numeric)
        if self.table is not None:
            hidden = hidden + self.table[codes].sum(dim=1)
        return self.rest(hidden)


def _wide_parts(spec: FeatureSpec) -> list[str]:
    """The parts of the folded net's numeric matrix, K columns each: the (clipped, filled) values for the
    numbers without log1p, log1p of the values for those with it, the missing flags if any number has one."""
    parts = [] if all(n.log1p for n in spec.numbers) else ["value"]
    parts += ["log"] if any(n.log1p for n in spec.numbers) else []
    return parts + (["missing"] if any(n.indicator for n in spec.numbers) else [])


def _offsets(spec: FeatureSpec) -> list[int]:
    """Where each category's rows start in the folded net's stacked table."""
    starts, total = [], 0
    for c in spec.categories:
        starts.append(total)
        total += c.cardinality
    return starts


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
    codes = torch.zeros(2, len(spec.categories), dtype=torch.int64)
    if folded:
        module: torch.nn.Module = _FoldedNet(net.eval(), spec).eval()
        args: tuple = (torch.zeros(2, len(spec.numbers) * len(_wide_parts(spec))),)
        names = ["numeric"]
        if spec.categories:
            args, names = (*args, codes), ["numeric", "categorical"]
    else:
        module = net.eval()
        args, names = (torch.zeros(2, spec.numeric_width), codes), ["numeric", "categorical"]
    buffer = io.BytesIO()
    torch.onnx.export(module, args, buffer, input_names=names, output_names=["raw"],
                      dynamic_axes={**{k: {0: "N"} for k in names}, "raw": {0: "N"}}, opset_version=OPSET,
                      dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = IR_VERSION
    return model


def _preprocessing_graph(spec: FeatureSpec, folded: bool, empty_categorical: bool = False) -> onnx.ModelProto:
    """Raw inputs → the net's inputs: `numeric` (the wide matrix for the folded net; the scaled encode
    matrix for a plug-in) and `categorical` [N, C] codes (offset into the stacked table when folded)."""
    nodes, inits, inputs = [], [], []
    inits += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
              helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
    if spec.numbers:
        inputs.append(helper.make_tensor_value_info("numbers", TensorProto.FLOAT, ["N", len(spec.numbers)]))
        width = len(spec.numbers) * len(_wide_parts(spec)) if folded else spec.numeric_width
        if folded:
            _wide_numbers(spec, nodes, inits)
        else:  # a plug-in takes scaled inputs in FeatureSpec.encode's order
            mean, std = _scaling(spec)
            inits += [helper.make_tensor("numeric__mean", TensorProto.FLOAT, [width], mean),
                      helper.make_tensor("numeric__std", TensorProto.FLOAT, [width], std)]
            nodes += [helper.make_node("Sub", [_numbers(spec, nodes, inits), "numeric__mean"], ["numeric__centred"]),
                      helper.make_node("Div", ["numeric__centred", "numeric__std"], ["numeric"])]
    else:  # no numbers: an empty [N, 0] matrix shaped after the category input
        width = 0
        inits.append(helper.make_tensor("empty_shape_tail", TensorProto.INT64, [1], [0]))
        nodes += [helper.make_node("Shape", ["categories"], ["categories__rows"], end=1),
                  helper.make_node("Concat", ["categories__rows", "empty_shape_tail"], ["numeric__shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["numeric__shape"], ["numeric"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))]
    outputs = [helper.make_tensor_value_info("numeric", TensorProto.FLOAT, ["N", width])]
    if spec.categories:
        count = len(spec.categories)
        inputs.append(helper.make_tensor_value_info("categories", TensorProto.STRING, ["N", count]))
        columns = ["categories"]
        if count > 1:
            inits.append(helper.make_tensor("categories__sizes", TensorProto.INT64, [count], [1] * count))
            columns = [f"categories__{i}" for i in range(count)]
            nodes.append(helper.make_node("Split", ["categories", "categories__sizes"], columns, axis=1))
        offsets = _offsets(spec) if folded else [0] * count
        codes = [f"categories__code{i}" for i in range(count)] if count > 1 else ["categorical"]
        for c, column, code, offset in zip(spec.categories, columns, codes, offsets, strict=True):
            keys = [*c.vocabulary, ""]
            values = [offset + v for v in (*range(2, len(c.vocabulary) + 2), MISSING)]
            nodes.append(helper.make_node("LabelEncoder", [column], [code], domain="ai.onnx.ml", keys_strings=keys,
                                          values_int64s=values, default_int64=offset + UNKNOWN))
        if count > 1:
            nodes.append(helper.make_node("Concat", codes, ["categorical"], axis=1))
        outputs.append(helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", count]))
    elif empty_categorical:  # a plug-in that reads its (empty) category matrix
        inits.append(helper.make_tensor("no_columns", TensorProto.INT64, [1], [0]))
        nodes += [helper.make_node("Shape", ["numeric"], ["categorical__rows"], end=1),
                  helper.make_node("Concat", ["categorical__rows", "no_columns"], ["categorical__shape"], axis=0),
                  helper.make_node("ConstantOfShape", ["categorical__shape"], ["categorical"],
                                   value=helper.make_tensor("v", TensorProto.INT64, [1], [0]))]
        outputs.append(helper.make_tensor_value_info("categorical", TensorProto.INT64, ["N", 0]))
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, "preprocess", inputs, outputs, [t for t in inits if t.name in used])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                   helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
                             ir_version=IR_VERSION)


def _clip_vectors(spec: FeatureSpec, inits: list, low_floor: dict[int, float] | None = None) -> tuple[str, str]:
    big = float(np.finfo(np.float32).max)
    k = len(spec.numbers)
    low = [n.clip[0] if n.clip is not None else -big for n in spec.numbers]
    for i, floor in (low_floor or {}).items():
        low[i] = max(low[i], floor)
    inits += [helper.make_tensor("numbers__lo", TensorProto.FLOAT, [k], low),
              helper.make_tensor("numbers__hi", TensorProto.FLOAT, [k],
                                 [n.clip[1] if n.clip is not None else big for n in spec.numbers])]
    return "numbers__lo", "numbers__hi"


def _wide_numbers(spec: FeatureSpec, nodes: list, inits: list) -> None:
    """`numbers` [N, K] → `numeric` [N, K · parts] for the folded net (see `_wide_parts`), one vectorised
    node per step: missing values replaced first, on the raw scale (the training fill is on the
    transformed scale: expm1 of it for a log1p feature), so no NaN reaches a zero weight; then clip and
    log1p(max(x, 0)) over every column (each column's weights read only the part its feature uses)."""
    parts = _wide_parts(spec)
    fill = [float(np.expm1(n.fill)) if n.log1p else n.fill for n in spec.numbers]
    inits.append(helper.make_tensor("numbers__fill_raw", TensorProto.FLOAT, [len(fill)], fill))
    nodes += [helper.make_node("IsNaN", ["numbers"], ["numbers__nan"]),
              helper.make_node("Where", ["numbers__nan", "numbers__fill_raw", "numbers"], ["numbers__filled"])]
    value = "numbers__filled"
    if any(n.clip is not None for n in spec.numbers):
        low, high = _clip_vectors(spec, inits)
        nodes += [helper.make_node("Max", [value, low], ["numbers__above"]),
                  helper.make_node("Min", ["numbers__above", high], ["numbers__clip"])]
        value = "numbers__clip"
    wide = {"value": value}
    if "log" in parts:
        nodes += [helper.make_node("Max", [value, "zero"], ["numbers__pos"]),
                  helper.make_node("Add", ["numbers__pos", "one"], ["numbers__p1"]),
                  helper.make_node("Log", ["numbers__p1"], ["numbers__log"])]
        wide["log"] = "numbers__log"
    if "missing" in parts:
        nodes.append(helper.make_node("Cast", ["numbers__nan"], ["numbers__missing"], to=TensorProto.FLOAT))
        wide["missing"] = "numbers__missing"
    if len(parts) == 1:  # the last node's result is the matrix
        nodes[-1].output[0] = "numeric"
    else:
        nodes.append(helper.make_node("Concat", [wide[p] for p in parts], ["numeric"], axis=1))


def _numbers(spec: FeatureSpec, nodes: list, inits: list) -> str:
    """`numbers` [N, K] in FeatureSpec.encode's order (unscaled), for a plug-in net, each step one vectorised
    node whatever K is: clip, log1p where declared, NaN → the training fill (NaN may pass through clip and
    log: the fill replaces it by the mask of the raw input), then the missing flags interleaved after their
    columns. Returns the name of the result."""
    numbers = spec.numbers
    k = len(numbers)
    nodes.append(helper.make_node("IsNaN", ["numbers"], ["numbers__nan"]))
    value = "numbers"
    if any(n.clip is not None for n in numbers):
        low, high = _clip_vectors(spec, inits)
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
    inits.append(helper.make_tensor("numbers__fill", TensorProto.FLOAT, [k], [n.fill for n in numbers]))
    nodes.append(helper.make_node("Where", ["numbers__nan", "numbers__fill", value], ["numbers__filled"]))
    flagged = [i for i, n in enumerate(numbers) if n.indicator]
    if not flagged:
        return "numbers__filled"
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
    return "numbers__encoded"


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


def packed_columns(spec: FeatureSpec) -> dict[str, list[str]]:
    """The `lakeloop.inputs` metadata: each graph input and the feature columns it packs, in order."""
    columns = {"numbers": [n.name for n in spec.numbers], "categories": [c.name for c in spec.categories]}
    return {name: names for name, names in columns.items() if names}


def feature_columns(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Raw rows as one [N, 1] array per feature, as the model server takes and logs them: numbers and
    booleans float32 (NaN = missing), categories as their canonical strings ("" = missing)."""
    feeds = {}
    for n in spec.numbers:
        column = frame[n.name]
        values = boolean_values(column, n.name) if n.boolean else column.astype("float64").to_numpy()
        feeds[n.name] = values.astype(np.float32).reshape(-1, 1)
    for c in spec.categories:
        feeds[c.name] = category_strings(frame[c.name]).to_numpy(dtype=object).reshape(-1, 1)
    return feeds


def onnx_inputs(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Raw rows as the exported model's graph inputs (`numbers` [N, K], `categories` [N, C])."""
    return pack(feature_columns(frame, spec), packed_columns(spec))
