"""The README's examples name things that exist: every `lakeloop` command line's command and options,
every `make` target, and every name a Python example imports. (Running them needs the stack: the
tests of each part run the same calls.)"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from lakeloop.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)


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
        for depth in range(len(command), 0, -1):  # the longest prefix that is a command
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
