"""The server runs from the `serve` extra alone: no torch, no prefect (nor pandas, pandera, lightning)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import requires

import httpx
import pytest

from tests.serving.conftest import ROOT, lakeloop_serve, rows

HEAVY = ("torch", "prefect", "lightning", "pandas", "pandera", "onnx", "onnxscript")

# Runs the real CLI in a Python where importing any heavy package fails, as it would in an
# environment built with `pip install ".[serve]"`.
BLOCKED_PYTHON = f"""
import sys
BLOCKED = {HEAVY!r}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in the serve extra)")
        return None
sys.meta_path.insert(0, Blocker())
from lakeloop.cli import main
sys.argv = ["lakeloop", *sys.argv[1:]]
main()
"""


def test_serve_extra_declares_neither_torch_nor_prefect():
    serve = [r for r in requires("lakeloop") if 'extra == "serve"' in r]
    base = [r for r in requires("lakeloop") if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for r in serve + base}
    assert "onnxruntime" in names
    assert not names & set(HEAVY), names & set(HEAVY)


def test_lakeloop_serve_works_without_the_heavy_packages(model_file, tmp_path):
    prefix = [sys.executable, "-c", BLOCKED_PYTHON]
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1", "--log-dir", str(tmp_path / "logs"),
                         "--log-interval", "0.2"], tmp_path, python_prefix=prefix) as served:
        body = {"inputs": [{"name": k, "shape": [2, 1], "datatype": "BYTES" if v.dtype == object else "FP32",
                            "data": v.ravel().tolist()} for k, v in rows(2).items()]}
        answer = httpx.post(f"{served.url}/v2/models/fraud/infer", content=json.dumps(body))
        assert answer.status_code == 200, answer.text
    assert "Traceback" not in served.output()


def test_grpc_on_the_default_front_needs_no_grpcio(model_file, tmp_path):
    """lakeloop's HTTP/2 front speaks gRPC with protobuf alone: the server runs, and answers tritonclient's
    gRPC calls, in a Python where importing grpcio fails (grpcio serves only `--http uvicorn`)."""
    from lakeloop.devstack import _proc
    from tests.serving.conftest import answers_over_grpc

    blocked = BLOCKED_PYTHON.replace(f"BLOCKED = {HEAVY!r}", f"BLOCKED = {(*HEAVY, 'grpc')!r}")
    port = _proc.free_port()
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1", "--grpc-port", str(port), "--api-key", "k",
                         "--no-inference-logs"], tmp_path, python_prefix=[sys.executable, "-c", blocked]) as served:
        answers_over_grpc(f"127.0.0.1:{port}", "k", rows(3, seed=2), model_file)
    assert "Traceback" not in served.output() and "blocked" not in served.output()


def test_registry_and_serving_modules_import_without_the_heavy_packages():
    code = BLOCKED_PYTHON.split("from lakeloop.cli")[0] + (
        "import lakeloop.serving, lakeloop.registry, lakeloop.secrets, lakeloop.cli\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
def test_pip_resolves_the_serve_extra_without_torch_or_prefect(tmp_path):
    """What pip would install for `.[serve]` on a clean Python (resolution only, from the registry)."""
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), f"{ROOT}[serve]"], check=True, timeout=600)
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"onnxruntime", "uvicorn", "hvac", "lakefs", "grpcio", "protobuf"} <= names
    assert not names & {"torch", "prefect", "lightning", "pandas", "pandera"}
