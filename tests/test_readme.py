"""The README's and the guide's (docs/) examples name things that exist: every `lakeloop` command line's
command and options, every `make` target, and every name a Python example imports; and the guide builds
with `mkdocs build --strict`. (Running them needs the stack: the tests of each part run the same
calls; the quickstart's are run by tests/cli/test_dev_stack.py.)"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from lakeloop.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [block for page in DOCS for block in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), re.S)]


def command_lines() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang in ("", "bash", "sh"):
            lines += [line.split("#")[0].strip() for line in body.splitlines()
                      if line.strip().startswith(("lakeloop ", "make "))]
    return lines


def test_every_lakeloop_command_line_uses_real_commands_and_options():
    runner = CliRunner()
    checked = 0
    for line in command_lines():
        words = shlex.split(line)
        if words[0] != "lakeloop":
            continue
        command = [w for w in words[1:] if not w.startswith("-")]
        helped = None
        for depth in range(len(command), -1, -1):  # the longest prefix that is a command (0: `lakeloop` itself)
            result = runner.invoke(app, [*command[:depth], "--help"], env={"COLUMNS": "200"})
            if result.exit_code == 0:
                helped = result.output
                break
        assert helped is not None, line
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in helped, f"{line}: {option} is not an option of `lakeloop {' '.join(command[:depth])}`"
        checked += 1
    assert checked >= 10


def test_every_make_target_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    for line in command_lines():
        words = line.split()
        if words[0] == "make":
            assert set(words[1:]) <= targets, line


def test_python_examples_import_real_names():
    imports = 0
    for lang, body in BLOCKS:
        if lang != "python":
            continue
        compile(body, "README.md", "exec")
        for module, names in re.findall(r"^from ([\w.]+) import ([\w, ]+)$", body, re.M):
            loaded = importlib.import_module(module)
            for name in (n.strip() for n in names.split(",")):
                assert hasattr(loaded, name), f"README: {module} has no {name}"
                imports += 1
    assert imports >= 5


def test_the_guide_builds_strictly(tmp_path):
    import subprocess
    import sys

    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env={"NO_MKDOCS_2_WARNING": "1",
                                                                                       "PATH": "/usr/bin:/bin"})
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()


def test_readme_links_point_at_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[\w./-]+\.md)\)", readme)
    assert len(links) >= 15
    assert [link for link in links if not (ROOT / link).is_file()] == []
