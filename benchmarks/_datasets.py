"""The datasets the quality and inference benchmarks run on: the example projects (their generators) and
scikit-learn's bundled tables as a team would bring them (a project from `lakeloop init`'s inference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from lakeloop.data import pseudonymise
from lakeloop.project import load_project, project_module, resolve_project
from lakeloop.project._infer import infer_project

ROOT = Path(__file__).resolve().parents[1]


def dataset(name: str, folder: Path, rows: int = 20_000):
    """(project, frame): an example project by name (`rows` generated rows), else `load_<name>` of scikit-learn."""
    return example(name, rows) if (ROOT / "examples" / name).is_dir() else bundled(name, folder)


def example(name: str, rows: int):
    project = resolve_project(ROOT / "examples" / name)
    frame = project_module(project, "generate").generate(rows, seed=0)
    if project.pii:
        frame = pseudonymise(frame, b"k" * 32, project.pii_columns)  # what training reads: the published data
    return project, frame


def bundled(name: str, folder: Path):
    import sklearn.datasets

    frame = getattr(sklearn.datasets, f"load_{name}")(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_").replace("(", "").replace(")", "") for c in frame.columns]
    rng = np.random.default_rng(0)
    frame.loc[rng.random(len(frame)) < 0.05, frame.columns[0]] = np.nan  # a few blanks, as real tables have
    if name in ("wine", "digits"):
        frame["target"] = "class_" + frame["target"].astype(str)
    frame.insert(0, "row_id", [f"r{i:05d}" for i in range(len(frame))])
    inferred = infer_project(frame, "target", name.replace("_", "-"), id_column="row_id")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lakeloop.yaml").write_text(yaml.safe_dump(inferred.project, sort_keys=False))
    (folder / "schema.yaml").write_text(inferred.schema.to_yaml())
    return load_project(folder), frame
