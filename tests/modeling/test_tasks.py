"""Every task through features, nets and the ONNX export: scikit-learn's bundled datasets with missing values
added, the built-in net and a plug-in, and the plug-in contract's failures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sklearn.datasets
import torch
import yaml

from lakeloop.compression import export_onnx, onnx_inputs
from lakeloop.compression.candidates import onnx_outputs, parity, session, torch_outputs
from lakeloop.errors import ProjectError
from lakeloop.modeling.features import FeatureSpec
from lakeloop.modeling.metrics import task_metrics
from lakeloop.modeling.nets import build_net
from lakeloop.project import load_project
from lakeloop.project._infer import infer_project

PLUGIN = textwrap.dedent("""\
    import torch

    def linear(spec, task, outputs, scale=1.0):
        return Linear(spec.numeric_width, len(spec.categories), outputs, scale)

    class Linear(torch.nn.Module):
        def __init__(self, numbers, categories, outputs, scale):
            super().__init__()
            self.layer = torch.nn.Linear(numbers + categories, outputs)
            self.scale = scale

        def forward(self, numeric, categorical):
            return self.layer(torch.cat([numeric, categorical.float()], dim=1)) * self.scale

    def raises(spec, task, outputs):
        raise RuntimeError("no GPU memory left")

    def not_a_module(spec, task, outputs):
        return "a string"

    def wrong_width(spec, task, outputs):
        return Linear(spec.numeric_width, len(spec.categories), outputs + 2, 1.0)
    """)


def project_for(frame: pd.DataFrame, target: str, folder: Path, **overrides):
    inferred = infer_project(frame, target, "t")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lakeloop.yaml").write_text(yaml.safe_dump({**inferred.project, **overrides}))
    (folder / "schema.yaml").write_text(inferred.schema.to_yaml())
    (folder / "plug.py").write_text(PLUGIN)
    return load_project(folder)


def dataset(name: str, label: str) -> pd.DataFrame:
    frame = getattr(sklearn.datasets, name)(as_frame=True).frame.rename(columns={"target": label})
    rng = np.random.default_rng(0)
    first = frame.columns[0]
    frame.loc[rng.random(len(frame)) < 0.1, first] = np.nan  # missing values are model inputs
    if name == "load_wine":
        frame[label] = frame[label].map({0: "barolo", 1: "grignolino", 2: "barbera"})
        frame["region"] = rng.choice(["north", "south", None], len(frame))  # a category with gaps
    return frame


@pytest.mark.parametrize(("name", "label", "task", "model"), [
    ("load_wine", "cultivar", "multiclass", {}),
    ("load_diabetes", "progression", "regression", {}),
    ("load_diabetes", "progression", "regression", {"plugin": "plug:linear", "options": {"scale": 0.5}}),
    ("load_breast_cancer", "malignant", "binary", {"plugin": "plug:linear"}),
])
def test_the_export_matches_torch_for_every_task(tmp_path, name, label, task, model):
    frame = dataset(name, label)
    overrides = {"model": model} if model else {}
    if task == "regression":
        overrides["label"] = {"column": label, "task": "regression", "transform": "log1p"}
    project = project_for(frame, label, tmp_path / "p", **overrides)
    assert project.task == task
    spec = FeatureSpec.fit(project, frame)
    torch.manual_seed(0)
    net = build_net(spec, project.model, project).eval()
    path = export_onnx(net, spec, tmp_path / "m.onnx")
    sess = session(path)
    outputs = onnx_outputs(sess, onnx_inputs(frame, spec), task)
    expected = torch_outputs(net, spec, frame)
    assert parity(outputs, expected, task) <= 1e-5
    names = {o.name: o.shape for o in sess.get_outputs()}
    if task == "multiclass":
        assert names == {"probabilities": ["N", 3], "label": ["N", 1]}
        assert np.allclose(outputs.sum(axis=1), 1, atol=1e-5)
        assert sess.get_modelmeta().custom_metadata_map["lakeloop.classes"] == '["barbera", "barolo", "grignolino"]'
    elif task == "regression":
        assert names == {"prediction": ["N", 1]}
        assert (outputs > -1).all()  # log1p undone in the graph: predictions are in the label's units
    else:
        assert names == {"probability": ["N", 1], "label": ["N", 1]}
    metrics = task_metrics(task, spec.targets(frame), outputs)
    assert {"multiclass": "macro_f1", "regression": "rmse", "binary": "pr_auc"}[task] in metrics


@pytest.mark.parametrize(("plugin", "message"), [
    ("nowhere:make", "model plug-in 'nowhere:make': cannot import nowhere (ModuleNotFoundError"),
    ("plug:missing", "module plug has no 'missing'"),
    ("plug:raises", "model plug-in 'plug:raises' raised RuntimeError: no GPU memory left"),
    ("plug:not_a_module", "returned str, not a torch nn.Module"),
    ("plug:wrong_width", "returned output of shape (2, 3) for 2 rows; a binary net must return [N, 1]"),
    ("no-such-entry-point", "no entry point of that name in group lakeloop.models"),
])
def test_a_broken_plugin_is_named_with_what_went_wrong(tmp_path, plugin, message):
    frame = dataset("load_breast_cancer", "malignant")
    project = project_for(frame, "malignant", tmp_path / "p", model={"plugin": plugin})
    spec = FeatureSpec.fit(project, frame)
    with pytest.raises(ProjectError) as info:
        build_net(spec, project.model, project)
    assert message in str(info.value)


def test_the_shipped_plugin_example_trains_exports_and_matches(tmp_path):
    """examples/demand/net.py, the documented plug-in, through the same path as the built-in net."""
    from tests._examples import DEMAND, project_module

    project = DEMAND.model_copy(update={"model": DEMAND.model.model_copy(update={
        "plugin": "net:residual_mlp", "options": {"width": 32, "blocks": 2}})})
    frame = project_module(project, "generate").generate(600, seed=3)
    spec = FeatureSpec.fit(project, frame)
    net = build_net(spec, project.model, project)
    assert type(net).__name__ == "ResidualMLP"
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-2)
    numeric, categorical = (torch.from_numpy(a) for a in spec.encode(frame))
    target = torch.from_numpy(spec.targets(frame)).float().reshape(-1, 1)
    target = (target - target.mean()) / target.std()
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(net(numeric, categorical), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # it learns
    net.eval()
    sess = session(export_onnx(net, spec, tmp_path / "plugin.onnx"))
    assert parity(onnx_outputs(sess, onnx_inputs(frame, spec), "regression"),
                  torch_outputs(net, spec, frame), "regression") <= 1e-4


def layout_frame(numbers: int, categories: int, rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(numbers * 10 + categories)
    frame = pd.DataFrame({f"x{i}": rng.lognormal(1.0, 1.0, rows) for i in range(numbers)})
    for i in range(categories):
        frame[f"c{i}"] = rng.choice(["a", "b", "c", None], rows)
    frame["y"] = rng.choice(["no", "yes"], rows)
    for i in range(0, numbers, 2):  # gaps in every other number
        frame.loc[rng.random(rows) < 0.1, f"x{i}"] = np.nan
    return frame


@pytest.mark.parametrize(("numbers", "categories", "options"), [
    (3, 0, {}),                                           # numbers only, plain
    (4, 0, {"log1p": True, "clip": [0.5, 20.0]}),         # every number transformed
    (0, 1, {}),                                           # one category, nothing else
    (0, 3, {}),
    (5, 2, {"log1p": "odd", "clip": [0.0, 30.0]}),        # a mix: log1p on some, clip, flags, categories
])
def test_the_built_in_net_exports_exactly_for_any_feature_layout(tmp_path, numbers, categories, options):
    frame = layout_frame(numbers, categories)
    features = []
    for i in range(numbers):
        feature = {"name": f"x{i}", "type": "number"}
        if options.get("log1p") is True or (options.get("log1p") == "odd" and i % 2):
            feature["log1p"] = True
        if "clip" in options:
            feature["clip"] = options["clip"]
        features.append(feature)
    features += [{"name": f"c{i}", "type": "category"} for i in range(categories)]
    project = project_for(frame, "y", tmp_path / "p", features=features)
    spec = FeatureSpec.fit(project, frame.head(300))
    torch.manual_seed(1)
    net = build_net(spec, project.model, project).eval()
    path = export_onnx(net, spec, tmp_path / "m.onnx")
    rows = frame.tail(100).copy()
    if categories:
        rows.loc[rows.index[:5], "c0"] = "never seen"  # the reserved unknown index
    assert parity(onnx_outputs(session(path), onnx_inputs(rows, spec), "binary"),
                  torch_outputs(net, spec, rows), "binary") <= 1e-5
    assert rows.isna().any().any()


def test_the_graph_does_not_grow_with_the_number_of_features(tmp_path):
    """ONNX Runtime's cost at one row is per node: 6 or 60 numbers and 1 or 8 categories give the same nodes."""
    import onnx

    def nodes(numbers: int, categories: int) -> list[str]:
        frame = layout_frame(numbers, categories)
        features = [{"name": f"x{i}", "type": "number", "log1p": bool(i % 2)} for i in range(numbers)]
        features += [{"name": f"c{i}", "type": "category"} for i in range(categories)]
        project = project_for(frame, "y", tmp_path / f"p{numbers}-{categories}", features=features)
        spec = FeatureSpec.fit(project, frame)
        path = export_onnx(build_net(spec, project.model, project), spec, tmp_path / f"{numbers}-{categories}.onnx")
        return sorted(n.op_type for n in onnx.load(path).graph.node if n.op_type != "LabelEncoder")

    assert nodes(6, 2) == nodes(60, 2)
    assert nodes(6, 2) == nodes(6, 8)
