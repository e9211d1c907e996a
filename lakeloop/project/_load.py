"""Reading `lakeloop.yaml`: every problem named with its path in the file, its line and what to do."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lakeloop.errors import ProjectError
from lakeloop.project._model import Path_, Project
from lakeloop.shipped import shipped_root

PROJECT_FILE = "lakeloop.yaml"


def project_file(where: str | Path) -> Path:
    """The project file of a folder (its lakeloop.yaml) or the file itself."""
    path = Path(where).expanduser()
    if path.is_dir():
        path = path / PROJECT_FILE
    if not path.is_file():
        hint = "create one with `lakeloop init DIR --from-data FILE --label COLUMN`"
        raise ProjectError(f"{path}: no such project file; {hint}", file=str(path), problems=[])
    return path


SHIPPED = shipped_root()  # lakeloop's checkout, or the bundle an installed lakeloop carries
EXAMPLES = SHIPPED / "examples" if SHIPPED else None


def resolve_project(ref: str | Path | Project) -> Project:
    """A project from a folder or file path (relative to the working directory, then to lakeloop's
    checkout or installed bundle, so `examples/fraud` works from anywhere), or by name: a folder `NAME` under any of the
    folders in LAKELOOP_PROJECTS (separated by `os.pathsep`), then under lakeloop's `examples/`."""
    if isinstance(ref, Project):
        return ref
    path = Path(ref).expanduser()
    for candidate in (path, *(() if path.is_absolute() or SHIPPED is None else (SHIPPED / path,))):
        if candidate.exists():
            return load_project(candidate)
    roots = [Path(p) for p in os.environ.get("LAKELOOP_PROJECTS", "").split(os.pathsep) if p]
    roots += [EXAMPLES] if EXAMPLES else []
    for root in roots:
        if (root / str(ref) / PROJECT_FILE).is_file():
            return load_project(root / str(ref))
    raise ProjectError(f"no project {str(ref)!r}: not a path, and no {ref}/{PROJECT_FILE} under "
                       f"{', '.join(map(str, roots))}; give the project's folder or add its parent to "
                       "LAKELOOP_PROJECTS", problems=[])


def load_project(where: str | Path) -> Project:
    """Read and check a project file (a folder holding lakeloop.yaml, or the file).

    Raises:
        ProjectError: with every problem found, each naming the key's path, its line and the fix.
    """
    path = project_file(where)
    text = path.read_text()
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        detail = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ProjectError(f"{path}{line}: not valid YAML ({detail})", file=str(path), problems=[]) from None
    if not isinstance(raw, dict):
        raise ProjectError(f"{path}: expected a mapping of keys (name, data, schema, label, features, ...), "
                           f"got {type(raw).__name__}", file=str(path), problems=[])
    lines = _line_index(node)
    try:
        project = Project.model_validate(raw)
    except ValidationError as exc:
        raise _error(path, _describe_all(exc.errors(), lines)) from None
    problems = [f"{_where(p, lines)}: {message}" for p, message in project.problems()]
    if problems:
        raise _error(path, problems)
    project._root = str(path.parent.resolve())
    project._source = text
    return project


def _error(path: Path, problems: list[str]) -> ProjectError:
    head = f"{path}: {problems[0]}" + (f" (+{len(problems) - 1} more problem(s))" if len(problems) > 1 else "")
    return ProjectError(head, file=str(path), problems=problems)


def _line_index(node: yaml.Node | None) -> dict[Path_, int]:
    """The 1-based line of every key and item in the document, by its path."""
    index: dict[Path_, int] = {}

    def walk(n: yaml.Node, path: Path_) -> None:
        index.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                child = (*path, key.value)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, (*path, i))

    if node is not None:
        walk(node, ())
    return index


def _where(path: Path_, lines: dict[Path_, int]) -> str:
    """`features[2].type (line 14)`: the nearest line known for the path (a missing key: its parent's)."""
    for depth in range(len(path), -1, -1):
        if path[:depth] in lines:
            return f"{_dotted(path) or 'top level'} (line {lines[path[:depth]]})"
    return _dotted(path) or "top level"


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe_all(errors: list[dict[str, Any]], lines: dict[Path_, int]) -> list[str]:
    """Unknown keys first, each with the nearest valid key; a required key that such a suggestion names is
    not reported again as missing (`lable:` is one mistake, not two)."""
    unknown, suggested, rest = [], set(), []
    for error in errors:
        path = _path(error)
        if error["type"] == "extra_forbidden":
            valid = _valid_keys(path[:-1])
            near = difflib.get_close_matches(str(path[-1]), valid, n=1, cutoff=0.6)
            hint = f"did you mean `{near[0]}`?" if near else f"valid keys: {', '.join(valid)}"
            unknown.append(f"{_where(path, lines)}: unknown key {str(path[-1])!r}; {hint}")
            if near:
                suggested.add((*path[:-1], near[0]))
        elif error["type"] == "missing":
            if path not in suggested:
                rest.append((path, f"{_where(path, lines)}: required key {str(path[-1])!r} is missing"))
        else:
            value = error.get("input")
            shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
            rest.append((path, f"{_where(path, lines)}: {error['msg'][0].lower() + error['msg'][1:]}{shown}"))
    return unknown + [message for path, message in rest if path not in suggested]


def _path(error: dict[str, Any]) -> Path_:
    return tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged"))))


def _valid_keys(path: Path_) -> list[str]:
    """The keys the model accepts at `path` (aliases as written in the file)."""
    model: type[BaseModel] | None = Project
    for part in path:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_of(arg)
        if found is not None:
            return found
    return None
