"""The import direction of the architecture page: flows → tasks → lakeloop, tasks → blocks → lakeloop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "lakeloop": {"flows", "tasks", "blocks"},
    "blocks": {"flows", "tasks"},
    "tasks": {"flows"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_imports_point_one_way():
    violations = []
    for package, forbidden in FORBIDDEN.items():
        for path in (ROOT / package).rglob("*.py"):
            if package == "lakeloop" and "cli" in path.relative_to(ROOT / package).parts:
                continue  # the composition root; it imports flows/blocks lazily inside commands
            bad = imported_packages(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert violations == []


def test_cli_imports_flows_and_blocks_only_inside_commands():
    for path in (ROOT / "lakeloop" / "cli").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = set()
        for node in top_level:
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
        assert not names & {"flows", "tasks", "blocks", "prefect", "torch"}, path


def test_the_library_names_no_dataset():
    """Projects declare their data: no column, label or schema of an example project appears in the code
    of lakeloop, flows, tasks or blocks (the examples live in examples/)."""
    import yaml

    names = set()
    for project_file in (ROOT / "examples").glob("*/lakeloop.yaml"):
        spec = yaml.safe_load(project_file.read_text())
        names |= {spec["label"]["column"], *(f["name"] for f in spec["features"]),
                  *(p["column"] for p in spec.get("pii", [])), spec["schema"].split(":")[-1]}
        names |= {spec["id"]} if spec.get("id") else set()
    # one-word names (amount, price, store, category) are also plain English and the library's own words
    names = {n for n in names if "_" in n or n[0].isupper()}
    assert {"is_fraud", "merchant_category", "units_sold", "RawTransactionsSchema"} <= names  # the examples are read
    found = []
    for package in ("lakeloop", "flows", "tasks", "blocks"):
        for path in (ROOT / package).rglob("*.py"):
            text = path.read_text()
            found += [f"{path.relative_to(ROOT)}: {name}" for name in sorted(names)
                      if f'"{name}"' in text or f"'{name}'" in text]
    assert found == []
