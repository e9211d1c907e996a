"""ONNX models for the serving benchmark and tests: a raw-feature fraud model and deliberately broken copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def raw_feature_model(path: Path, seed: int = 0, state_dict_path: Path | None = None) -> Path:
    """An untrained raw-feature fraud model, exported exactly as compress-model exports one.

    With `state_dict_path`, the torch net's weights and `features.json` are saved beside it (the
    naive baseline server serves those with torch eager).
    """
    import torch

    from benchmarks._fraud import FRAUD, generate_transactions
    from lakeloop.compression import export_onnx
    from lakeloop.modeling.features import FeatureSpec
    from lakeloop.modeling.nets import TabularNet

    spec = FeatureSpec.fit(FRAUD, generate_transactions(500, seed=1))
    torch.manual_seed(seed)
    net = TabularNet(spec.numeric_width, spec.cardinalities).eval()
    if state_dict_path is not None:
        torch.save(net.state_dict(), state_dict_path)
        (state_dict_path.parent / "features.json").write_text(spec.to_json())
    return export_onnx(net, spec, path)


def _rewire_probability(source: Path, path: Path, constants: dict[str, np.ndarray], nodes: list) -> Path:
    """Copy `source` with its `probability` output recomputed: the original is renamed
    `probability_raw`, and `nodes` (which may use `constants`) must produce `probability` again."""
    model = onnx.load(source)
    graph = model.graph
    for node in graph.node:  # its consumers (the label) keep reading the original
        node.output[:] = ["probability_raw" if o == "probability" else o for o in node.output]
        node.input[:] = ["probability_raw" if i == "probability" else i for i in node.input]
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def nan_on_zero_amount(source: Path, path: Path) -> Path:
    """A copy whose probability is NaN when amount is 0 (probability * amount / amount): a model
    that looks fine on real rows but fails the server's smoke inference."""
    return _rewire_probability(source, path, {"amount_column": np.array([0], dtype=np.int64)}, [
        helper.make_node("Gather", ["numbers", "amount_column"], ["amount"], axis=1),  # the first packed number
        helper.make_node("Div", ["amount", "amount"], ["amount_ratio"]),
        helper.make_node("Mul", ["probability_raw", "amount_ratio"], ["probability"])])


def inverted(source: Path, path: Path) -> Path:
    """The same model answering 1 - p: a challenger that must lose the gate."""
    return _rewire_probability(source, path, {"inverted_one": np.array(1.0, dtype=np.float32)},
                               [helper.make_node("Sub", ["inverted_one", "probability_raw"], ["probability"])])


def wide_mlp(path: Path, features: int = 512, hidden: int = 1024, classes: int = 16, seed: int = 0) -> Path:
    """A plain torch MLP (features → hidden → hidden → classes, softmax) exported to ONNX with a free
    batch dimension, as a user would export their own: input `features` [N, features], output `scores`.
    Its own cost (~1.6M multiply-adds a row) dominates a request's, unlike the fraud model's."""
    import torch

    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden),
                              torch.nn.ReLU(), torch.nn.Linear(hidden, classes), torch.nn.Softmax(dim=-1)).eval()
    torch.onnx.export(net, (torch.zeros(1, features),), str(path), input_names=["features"], output_names=["scores"],
                      dynamic_axes={"features": {0: "N"}, "scores": {0: "N"}}, opset_version=17, dynamo=False)
    return path
