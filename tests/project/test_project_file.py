"""The project file: strict keys with their line and a suggestion, cross-field rules, schemas, data checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from lakeloop.errors import ProjectError
from lakeloop.project import data_problems, load_project, project_schemas

ROOT = Path(__file__).resolve().parents[2]

CHURN_SCHEMA = pa.DataFrameSchema({
    "customer_id": pa.Column(str, unique=True),
    "email": pa.Column(str, nullable=True),
    "plan": pa.Column(str, pa.Check.isin(["basic", "pro", "team"]), nullable=True),
    "monthly_fee": pa.Column(float, pa.Check.ge(0), nullable=True),
    "tenure_months": pa.Column(int, pa.Check.ge(0)),
    "autopay": pa.Column(bool),
    "churned": pa.Column(str, pa.Check.isin(["yes", "no"])),
}, strict=True, coerce=True)

CHURN = """\
name: churn
data:
  repository: churn-data
  prefix: customers
schema: schema.yaml
id: customer_id
label:
  column: churned
  task: binary
  positive_class: "yes"
features:
  - name: plan
    type: category
  - name: monthly_fee
    type: number
    log1p: true
  - name: tenure_months
    type: number
  - name: autopay
    type: boolean
pii:
  - column: email
    treatment: pseudonymise
"""


def write_project(folder: Path, text: str = CHURN, schema: pa.DataFrameSchema | str = CHURN_SCHEMA) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lakeloop.yaml").write_text(textwrap.dedent(text))
    (folder / "schema.yaml").write_text(schema if isinstance(schema, str) else schema.to_yaml())
    return folder


def problems_of(folder: Path) -> list[str]:
    with pytest.raises(ProjectError) as info:
        load_project(folder)
    assert str(folder / "lakeloop.yaml") in str(info.value)  # every message names the file
    return info.value.problems


def test_the_fraud_example_loads_with_its_schemas():
    project = load_project(ROOT / "examples" / "fraud")
    assert (project.name, project.task, project.primary_metric, project.higher_is_better) == (
        "fraud", "binary", "pr_auc", True)
    schemas = project_schemas(project)
    email = schemas.raw.columns["customer_email"]
    assert any("@" in str(c) for c in email.checks)  # raw: real addresses
    assert [str(c.statistics) for c in schemas.published.columns["customer_email"].checks] == [
        "{'pattern': '^pii_[0-9a-f]{32}$'}"]  # published: keyed pseudonyms only
    assert "is_fraud" in schemas.published.columns


def test_a_yaml_schema_project_with_pii_treatments(tmp_path):
    text = CHURN.replace("    treatment: pseudonymise", "    treatment: drop")
    project = load_project(write_project(tmp_path / "churn", text))
    schemas = project_schemas(project)
    assert "email" in schemas.raw.columns and "email" not in schemas.published.columns
    assert (project.primary_metric, project.feature("monthly_fee").log1p) == ("pr_auc", True)


def test_unknown_keys_name_the_path_the_line_and_the_nearest_key(tmp_path):
    folder = write_project(tmp_path / "p", CHURN.replace("label:", "lable:"))
    problems = problems_of(folder)
    assert problems == ["lable (line 7): unknown key 'lable'; did you mean `label`?"]  # one mistake, one line

    folder = write_project(tmp_path / "q", CHURN.replace("    type: boolean", "    typ: boolean"))
    [problem, *_] = problems_of(folder)
    assert "features[3].typ (line 20): unknown key 'typ'; did you mean `type`?" in problem, problem

    folder = write_project(tmp_path / "r", CHURN + "training:\n  epochz: 3\n")
    [problem] = problems_of(folder)
    assert "training.epochz (line 25): unknown key 'epochz'; did you mean `epochs`?" in problem


def test_wrong_types_name_the_value(tmp_path):
    folder = write_project(tmp_path / "p", CHURN + "training:\n  epochs: many\n")
    [problem] = problems_of(folder)
    assert "training.epochs (line 25)" in problem and "'many'" in problem and "integer" in problem
    folder = write_project(tmp_path / "q", CHURN.replace("type: category", "type: text"))
    [problem] = problems_of(folder)
    assert "features[0].type (line 13)" in problem and "'number', 'category' or 'boolean'" in problem


@pytest.mark.parametrize(("change", "expected"), [
    (lambda t: t.replace("  - name: tenure_months", "  - name: plan\n    type: category\n  - name: tenure_months"),
     "features[2].name (line 17): feature 'plan' is listed twice (features[0] and features[2]); keep one"),
    (lambda t: t.replace("name: autopay", "name: churned"),
     "feature 'churned' is the label column"),
    (lambda t: t.replace("name: autopay", "name: email"),
     "feature 'email' is a PII column (pii: pseudonymise)"),
    (lambda t: t.replace('  positive_class: "yes"', "  positive_class: yes\n  classes: [a, b, c]"),
     "label.classes (line 11): a binary task has two classes, not 3"),
    (lambda t: t.replace("task: binary", "task: multiclass").replace('  positive_class: "yes"\n', ""),
     "a multiclass task needs classes"),
    (lambda t: t + "metrics:\n  primary: rmse\n",
     "metrics.primary (line 25): metric 'rmse' does not fit task 'binary'; expected one of pr_auc, roc_auc"),
    (lambda t: t.replace("type: category\n", "type: category\n    log1p: true\n", 1),
     "features[0].log1p (line 14): log1p applies to numbers"),
    (lambda t: t.replace("name: churn", "name: Churn Model"),
     "name 'Churn Model' must be lower-case letters"),
])
def test_cross_field_rules(tmp_path, change, expected):
    problems = problems_of(write_project(tmp_path / "p", change(CHURN)))
    assert any(expected in p for p in problems), problems


def test_schema_problems_are_named(tmp_path):
    broken = write_project(tmp_path / "a", schema="columns: [this is not pandera\n")
    with pytest.raises(ProjectError, match=r"schema .*schema.yaml: pandera cannot read it"):
        project_schemas(load_project(broken))

    dotted = write_project(tmp_path / "b", CHURN.replace("schema: schema.yaml", "schema: nowhere.module:Schema"))
    with pytest.raises(ProjectError, match=r"schema 'nowhere.module:Schema': cannot import nowhere.module"):
        project_schemas(load_project(dotted))

    text_as_number = write_project(tmp_path / "c", CHURN.replace("type: category", "type: number", 1)
                                   .replace("    log1p: true\n", ""))
    with pytest.raises(ProjectError) as info:
        project_schemas(load_project(text_as_number))
    assert "feature 'plan' is declared number but the schema types it" in str(info.value)
    assert "declare it type: category" in str(info.value)

    regression_on_text = write_project(tmp_path / "d", CHURN.replace("task: binary", "task: regression")
                                       .replace('  positive_class: "yes"\n', ""))
    with pytest.raises(ProjectError, match=r"regression label 'churned' is .* a regression label is a number"):
        project_schemas(load_project(regression_on_text))

    missing = write_project(tmp_path / "e", CHURN.replace("name: autopay", "name: auto_pay"))
    with pytest.raises(ProjectError, match="feature column 'auto_pay' is not in the schema"):
        project_schemas(load_project(missing))


def test_a_dataframe_model_schema_imports_from_the_project_folder(tmp_path):
    folder = write_project(tmp_path / "p", CHURN.replace("schema: schema.yaml", "schema: churn_schema:Customers"))
    (folder / "churn_schema.py").write_text(textwrap.dedent("""\
        import pandera.pandas as pa
        from pandera.typing import Series

        class Customers(pa.DataFrameModel):
            customer_id: Series[str] = pa.Field(unique=True)
            email: Series[str] = pa.Field(nullable=True)
            plan: Series[str] = pa.Field(nullable=True)
            monthly_fee: Series[float] = pa.Field(ge=0, nullable=True)
            tenure_months: Series[int]
            autopay: Series[bool]
            churned: Series[str] = pa.Field(isin=["yes", "no"])
        """))
    schemas = project_schemas(load_project(folder))
    assert set(schemas.published.columns) == set(CHURN_SCHEMA.columns)


def frame(rows: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer_id": [f"c{i}" for i in range(rows)], "email": [f"u{i}@example.com" for i in range(rows)],
        "plan": rng.choice(["basic", "pro", None], rows), "monthly_fee": rng.uniform(5, 50, rows),
        "tenure_months": rng.integers(0, 60, rows), "autopay": rng.random(rows) < 0.5,
        "churned": rng.choice(["yes", "no"], rows)})


def test_data_problems(tmp_path):
    project = load_project(write_project(tmp_path / "p"))
    assert data_problems(project, frame(), "b.csv") == []
    one_class = frame().assign(churned="no")
    assert "a binary label needs two classes; 'churned' has 1 (no)" in data_problems(project, one_class, "b.csv")[0]
    three = frame().assign(churned=["yes", "no", "maybe", "no"] * 10)
    assert "has 3 (maybe, no, yes)" in data_problems(project, three, "b.csv")[0]
    duplicated = frame().assign(customer_id="same")
    assert any("the id column 'customer_id' is not unique (39 repeated" in p
               for p in data_problems(project, duplicated, "b.csv"))
    text_fee = frame().astype({"monthly_fee": object})
    text_fee.loc[3, "monthly_fee"] = "forty"
    assert any("feature 'monthly_fee' is declared number but holds 'forty'" in p
               for p in data_problems(project, text_fee, "b.csv"))
    assert "the label column 'churned' is missing" in data_problems(project, frame().drop(columns="churned"), "b")[0]

    multi = load_project(write_project(tmp_path / "m", CHURN.replace("task: binary", "task: multiclass").replace(
        '  positive_class: "yes"', "  classes: [basic, pro, team]").replace("column: churned", "column: plan")
        .replace("  - name: plan\n    type: category\n", "  - name: churned\n    type: category\n")))
    plans = frame().assign(plan=["basic", "pro", "enterprise", "team"] * 10)
    assert "'plan' has class(es) enterprise not declared in label.classes" in data_problems(multi, plans, "b")[0]
