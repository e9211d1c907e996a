"""`lakeloop init` and `lakeloop validate` through the CLI, on generated data and scikit-learn's bundled sets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def lakeloop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})


def churn(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A churn table as a platform team has one: text categories, blanks, an e-mail column, a free-text note."""
    rng = np.random.default_rng(seed)
    fee = rng.lognormal(3, 1, rows)
    fee[rng.random(rows) < 0.05] = np.nan
    return pd.DataFrame({
        "customer_id": [f"C{i:05d}" for i in range(rows)], "email": [f"user{i}@example.com" for i in range(rows)],
        "plan": rng.choice(["basic", "pro", "team", None], rows), "monthly_fee": fee,
        "tenure_months": rng.integers(0, 72, rows), "autopay": rng.random(rows) < 0.6,
        "note": [f"asked about invoice {i}" if i % 7 else f"mail me at u{i}@example.org" for i in range(rows)],
        "churned": rng.choice(["yes", "no"], rows, p=[0.2, 0.8])})


def test_init_then_validate_a_churn_table(tmp_path):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    init = lakeloop("init", "churn", "--from-data", "churn.csv", "--label", "churned", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    for decision in ("label (binary)", "PII (pseudonymise)", "PII (redact)", "feature (category)",
                     "feature (boolean)", "two distinct values", "positive class 'yes', the rarer one"):
        assert decision in init.stdout, init.stdout
    project = yaml.safe_load((tmp_path / "churn" / "lakeloop.yaml").read_text())
    assert project["label"] == {"column": "churned", "task": "binary", "positive_class": "yes",
                                "classes": ["no", "yes"]}
    assert project["id"] == "customer_id"
    assert {p["column"]: p["treatment"] for p in project["pii"]} == {"email": "pseudonymise", "note": "redact"}
    assert {f["name"]: f["type"] for f in project["features"]} == {
        "plan": "category", "monthly_fee": "number", "tenure_months": "number", "autopay": "boolean"}

    # the next batch from the same source fits: ranges have headroom, blanks are allowed where seen
    churn(300, seed=1).to_csv(tmp_path / "next.csv", index=False)
    ok = lakeloop("validate", "churn", "--data", "next.csv", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "project churn: binary on 'churned', 4 features, primary metric pr_auc" in ok.stdout
    assert "next.csv fits it" in ok.stdout

    # a batch that does not: the label gone, a fee far out of range, a plan never seen
    bad = churn(50, seed=2).drop(columns="churned")
    bad.loc[3, "monthly_fee"] = 1e9
    bad.loc[4, "plan"] = "platinum"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    refused = lakeloop("validate", "churn", "--data", "bad.csv", cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    text = " ".join(refused.stderr.split())
    assert "bad.csv does not fit project churn" in text
    assert "missing column 'churned' (the label column)" in text
    assert "column 'monthly_fee' failed in_range" in text and "1000000000.0" in text
    assert "column 'plan' failed isin" in text and "'platinum'" in text
    assert "u2@example" not in refused.stderr  # PII values never appear in a report


def test_init_refuses_to_overwrite_and_names_bad_options(tmp_path):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    assert lakeloop("init", "p", "--from-data", "churn.csv", "--label", "churned", cwd=tmp_path).returncode == 0
    again = lakeloop("init", "p", "--from-data", "churn.csv", "--label", "churned", cwd=tmp_path)
    assert again.returncode == 1 and "p/lakeloop.yaml exists; pass --force" in again.stderr
    missing = lakeloop("init", "q", "--from-data", "churn.csv", "--label", "churn", cwd=tmp_path)
    assert missing.returncode == 1 and "--label 'churn' is not a column of churn.csv" in missing.stderr
    wrong = lakeloop("init", "r", "--from-data", "churn.csv", "--label", "plan", "--task", "regression", cwd=tmp_path)
    assert wrong.returncode == 1 and "label 'plan' is empty in" in wrong.stderr  # blanks in the label
    text_regression = lakeloop("init", "s", "--from-data", "churn.csv", "--label", "churned", "--task",
                               "regression", cwd=tmp_path)
    assert text_regression.returncode == 1 and "a regression label is a number" in text_regression.stderr
    not_unique = lakeloop("init", "t", "--from-data", "churn.csv", "--label", "churned", "--id", "plan",
                          cwd=tmp_path)
    assert not_unique.returncode == 1 and "--id 'plan' is not unique" in not_unique.stderr


def test_validate_lists_every_problem_of_a_project_file(tmp_path):
    churn().to_csv(tmp_path / "churn.csv", index=False)
    assert lakeloop("init", "p", "--from-data", "churn.csv", "--label", "churned", cwd=tmp_path).returncode == 0
    path = tmp_path / "p" / "lakeloop.yaml"
    path.write_text(path.read_text().replace("features:", "feature:").replace("epochs: 20", "epochs: -3"))
    result = lakeloop("validate", "p", cwd=tmp_path)
    assert result.returncode == 1
    text = " ".join(result.stderr.split())
    assert "the project is invalid: 2 problem(s)" in text
    assert "unknown key 'feature'; did you mean `features`?" in text
    assert "training.epochs (line" in text and "greater than or equal to 1 (got -3)" in text


def _sklearn_frame(loader, target: str) -> pd.DataFrame:
    bunch = loader(as_frame=True)
    return bunch.frame.rename(columns={"target": target})


@pytest.mark.parametrize(("dataset", "target", "task", "features"), [
    ("load_breast_cancer", "diagnosis", "binary", 30),
    ("load_wine", "cultivar", "multiclass", 13),
    ("load_iris", "species", "multiclass", 4),
    ("load_diabetes", "progression", "regression", 10),
])
def test_init_infers_the_task_of_scikit_learns_datasets(tmp_path, dataset, target, task, features):
    import sklearn.datasets

    _sklearn_frame(getattr(sklearn.datasets, dataset), target).to_parquet(tmp_path / "data.parquet")
    init = lakeloop("init", "proj", "--from-data", "data.parquet", "--label", target, "--name", "p", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    project = yaml.safe_load((tmp_path / "proj" / "lakeloop.yaml").read_text())
    assert project["label"]["task"] == task and len(project["features"]) == features
    assert project["name"] == "p"
    assert lakeloop("validate", "proj", "--data", "data.parquet", cwd=tmp_path).returncode == 0


def test_the_demand_example_validates_the_data_its_generator_makes(tmp_path):
    made = subprocess.run([sys.executable, str(ROOT / "examples" / "demand" / "generate.py"), "sales.parquet",
                           "--rows", "3000", "--seed", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    checked = lakeloop("validate", ROOT / "examples" / "demand", "--data", "sales.parquet", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "project demand: regression on 'units_sold', 6 features, primary metric rmse (lower is better)" in \
        " ".join(checked.stdout.split())
