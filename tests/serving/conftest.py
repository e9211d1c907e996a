"""Fixtures for the model server: real ONNX models and `lakeloop serve` started as users start it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks._models import nan_on_zero_amount, raw_feature_model
from lakeloop.devstack import _proc

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["answers_over_grpc", "grpc_inputs_of", "lakeloop_serve", "nan_on_zero_amount", "raw_feature_model", "rows",
           "run_concurrently"]


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    return raw_feature_model(tmp_path_factory.mktemp("models") / "fraud.onnx")


def rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Real generated rows as the model's named inputs ([n, 1] each)."""
    from lakeloop.compression import feature_columns
    from lakeloop.modeling.features import FeatureSpec
    from lakeloop.project import resolve_project
    from tests._examples import generate_transactions

    frame = generate_transactions(max(n, 50), seed=seed).head(n)
    return feature_columns(frame, FeatureSpec.fit(resolve_project("fraud"), generate_transactions(500, seed=1)))


def answer_of(model: Path, columns: dict[str, np.ndarray], output: str = "probability") -> np.ndarray:
    """What ONNX Runtime itself answers for per-column rows (packed as the model declares)."""
    import onnxruntime as ort

    from lakeloop.packing import pack, packing_of

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run([output], pack(columns, packing_of(session.get_modelmeta().custom_metadata_map)))[0]


class Served:
    def __init__(self, url: str, process: subprocess.Popen, log: Path) -> None:
        self.url, self.process, self.log = url, process, log

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def lakeloop_serve(args: list[str], tmp: Path, env: dict[str, str] | None = None,
                   python_prefix: list[str] | None = None, ready: bool = True) -> Iterator[Served]:
    """Run `lakeloop serve ARGS --port P` in a subprocess; yield once it answers /v2/health/live."""
    port = _proc.free_port()
    log = tmp / f"serve-{port}.log"
    command = [*(python_prefix or [sys.executable, "-m", "lakeloop.cli"]), "serve", *args, "--port", str(port),
               "--cache-dir", str(tmp / "serving-cache")]
    process = _proc.start(command, log, env={"PYTHONPATH": str(ROOT), **(env or {})}, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        probe = "/v2/health/ready" if ready else "/v2/health/live"
        while True:
            if process.poll() is not None:
                raise AssertionError(f"lakeloop serve exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(url + probe, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"lakeloop serve did not become ready:\n{log.read_text()}")
            time.sleep(0.1)
        yield Served(url, process, log)
    finally:
        _proc.stop(process.pid, 15)


def run_concurrently(plan: list, one: Callable[[object], Awaitable[None]], clients: int = 16) -> None:
    """`one(item)` for every item of `plan`, `clients` at a time, in one asyncio loop (hostile-client tests)."""
    async def run_all() -> None:
        queue = list(plan)

        async def client() -> None:
            while queue:
                await one(queue.pop())
        await asyncio.gather(*(client() for _ in range(clients)))

    asyncio.run(run_all())


def grpc_inputs_of(batch: dict[str, np.ndarray], datatypes: dict[str, str] | None = None) -> list:
    """tritonclient.grpc InferInputs for named arrays (BYTES for strings, FP32 otherwise, unless `datatypes`)."""
    import tritonclient.grpc as triton

    inputs = []
    for name, array in batch.items():
        datatype = (datatypes or {}).get(name) or ("BYTES" if array.dtype == object else "FP32")
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def answers_over_grpc(address: str, key: str, batch: dict[str, np.ndarray], model: Path, name: str = "fraud") -> None:
    """A ModelInfer through tritonclient.grpc answers what ONNX Runtime answers for `batch`."""
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(address)
    result = client.infer(name, grpc_inputs_of(batch), headers={"authorization": f"Bearer {key}"})
    assert np.allclose(result.as_numpy("probability").ravel(), answer_of(model, batch).ravel(), rtol=1e-5)
