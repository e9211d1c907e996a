"""Serving, side by side: `lakeloop serve` vs the floor (a bare ASGI app and a bare grpcio servicer on
the same stack) vs KServe vs a naive FastAPI + pydantic + torch server.

One load generator pinned to CPU 1 (wrk for HTTP, h2load for gRPC) against each server in turn,
pinned to CPU 0, with identical request bytes for every server: 1-row and 64-row requests, 1 and 8
connections, V2 JSON tensors, V2 binary tensors (`Inference-Header-Content-Length`) and V2 over gRPC
(raw contents). lakeloop runs as in production: from the signed registry (lakeFS + Vault started
here), API key required, inference logs committed to a lakeFS branch. Every server's answer is
checked against ONNX Runtime's before it is timed. Then a second model whose own cost dominates (a
wide MLP exported from torch): lakeloop with and without adaptive batching at 1 and 8 connections.
Then the swap test: a run at 8 connections with a hot swap to a new version and two promotions of
broken versions (tampered with, NaN on a smoke row): it must see zero failed requests and no answer
from a broken version.

Usage: python benchmarks/serving.py [--duration 10] [--swap-duration 60] [--part all|throughput|batching|swap]
       [--idle-latency-us 0]  (hold CPUs out of deep idle states for the run: root only)
Needs wrk and h2load (apt-get install wrk nghttp2-client); KServe runs from .venv-kserve (`make
bench-tools` builds it); without that venv KServe is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import httpx  # noqa: E402
import hvac  # noqa: E402
import lakefs  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from benchmarks._fraud import generate_transactions  # noqa: E402
from benchmarks._models import nan_on_zero_amount, raw_feature_model, wide_mlp  # noqa: E402
from lakeloop.compression import feature_columns, onnx_inputs  # noqa: E402
from lakeloop.devstack import _proc, bao  # noqa: E402
from lakeloop.devstack.lakefs import start_process  # noqa: E402
from lakeloop.modeling.features import FeatureSpec  # noqa: E402
from lakeloop.registry import Registry, VaultSigner  # noqa: E402
from lakeloop.secrets import SERVING_PATH, VaultClient, VaultSettings, serving_keys  # noqa: E402
from lakeloop.serving import _inference_pb2 as pb  # noqa: E402
from lakeloop.serving._protocol import to_binary  # noqa: E402

KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
SERVER_CPU, CLIENT_CPU = "0", "1"
INFER_RPC = "/inference.GRPCInferenceService/ModelInfer"
WRK_SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"
local header_length = os.getenv("WRK_HEADER_LENGTH") or ""
if #header_length > 0 then wrk.headers["Inference-Header-Content-Length"] = header_length end
local key = os.getenv("WRK_AUTH") or ""
if #key > 0 then wrk.headers["Authorization"] = "Bearer " .. key end
"""
# Counting answers per model version needs wrk's response() hook, which reads every body and makes
# wrk's own latency figures unreliable: the swap test uses it for counts only, never for latency.
WRK_COUNT_SCRIPT = WRK_SCRIPT + """
versions = {}
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function response(status, headers, body)
  local v = string.match(body, '"model_version":"([^"]*)"') or ("status-" .. status)
  versions[v] = (versions[v] or 0) + 1
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for v, n in pairs(thread:get("versions")) do io.write(string.format("VERSION %s %d\\n", v, n)) end
  end
end
"""


# -- the embedded stack: lakeFS and Vault, as in production ---------------------------------------

@dataclass
class Stack:
    lakefs_url: str
    vault_url: str
    credentials: dict[str, Path]
    key_id: str
    secret: str
    root: Path
    root_token: str  # the benchmark's own throwaway Vault: kept (in memory) to mint and retire h2load's key
    _grpc_key: str = ""
    _main_keys: list[str] = field(default_factory=list)  # the server's own keys while the gRPC key is added

    def client(self) -> lakefs.Client:
        return lakefs.Client(host=self.lakefs_url, username=self.key_id, password=self.secret)

    def vault(self, consumer: str) -> VaultClient:
        path = self.credentials[consumer]
        return VaultClient(VaultSettings(address=self.vault_url, auth_method="approle",
                                         role_id_ref=f"file:{path}#role_id", secret_id_ref=f"file:{path}#secret_id"))

    def _set_serving_keys(self, keys: list[str]) -> None:
        kv = hvac.Client(url=self.vault_url, token=self.root_token).secrets.kv.v2
        kv.create_or_update_secret(SERVING_PATH, {"api_keys": ",".join(keys)})

    def grpc_key(self, grpc_address: str, body: Body) -> str:
        """Add a key for the gRPC runs beside the server's own and wait until the server takes it
        (it re-reads its keys every poll); `retire_grpc_key` removes it."""
        self._main_keys = serving_keys(self.vault("serving"))
        self._grpc_key = secrets.token_urlsafe(24)
        self._set_serving_keys([*self._main_keys, self._grpc_key])
        deadline = time.monotonic() + 30
        while True:
            try:
                ask(grpc_address, body, self._grpc_key)
                return self._grpc_key
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def retire_grpc_key(self) -> None:
        if self._grpc_key:
            self._set_serving_keys(self._main_keys)
            self._grpc_key = ""

    def serve_env(self) -> dict[str, str]:
        return {"LAKELOOP_LAKEFS_URL": self.lakefs_url, "VAULT_ADDR": self.vault_url,
                "LAKELOOP_SERVING_APPROLE_FILE": str(self.credentials["serving"])}


@contextmanager
def embedded_stack(root: Path) -> Iterator[Stack]:
    key_id, secret = "AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    url, lakefs_process = start_process(root / "lakefs", key_id, secret, None, root / "lakefs.log")
    token = secrets.token_urlsafe(24)
    vault = bao.start(root, _proc.free_port(), token)
    try:
        credentials = bao.bootstrap(vault.address, token, root, (key_id, secret))
        yield Stack(url, vault.address, credentials, key_id, secret, root, token)
    finally:
        _proc.stop(vault.process_pid)
        _proc.stop(lakefs_process.pid)


# -- requests: the same bytes for every server ----------------------------------------------------

NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


@dataclass(frozen=True)
class Body:
    """One request in one encoding, as the file the load generators send; `expected`: ORT's answer."""

    model: str
    rows: int
    encoding: str  # json | binary | grpc
    path: Path
    header_length: int | None  # binary: the length of the JSON header before the tensors
    expected: dict[str, np.ndarray]


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else "FP32"


def write_bodies(work: Path, model: str, rows: int, inputs: dict[str, np.ndarray],
                 expected: dict[str, np.ndarray]) -> dict[str, Body]:
    """The request for `inputs` as V2 JSON, V2 binary tensors and a gRPC ModelInferRequest (raw contents)."""
    stem = work / f"{model}-{rows}"
    json_bytes = json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": _datatype(v),
                                         "data": v.ravel().tolist()} for k, v in inputs.items()]}).encode()
    raws = {k: to_binary(v) for k, v in inputs.items()}
    header = json.dumps({"inputs": [{"name": k, "shape": list(v.shape), "datatype": _datatype(v),
                                     "parameters": {"binary_data_size": len(raws[k])}} for k, v in inputs.items()],
                         "parameters": {"binary_data_output": True}}).encode()
    message = pb.ModelInferRequest(model_name=model, raw_input_contents=list(raws.values()))
    for k, v in inputs.items():
        message.inputs.add(name=k, datatype=_datatype(v), shape=list(v.shape))
    encoded = message.SerializeToString()
    files = {"json": (json_bytes, None), "binary": (header + b"".join(raws.values()), len(header)),
             "grpc": (b"\0" + len(encoded).to_bytes(4, "big") + encoded, None)}  # one gRPC frame
    bodies = {}
    for encoding, (data, header_length) in files.items():
        path = stem.with_suffix(f".{encoding}")
        path.write_bytes(data)
        bodies[encoding] = Body(model, rows, encoding, path, header_length, expected)
    return bodies


def ask(target: str, body: Body, auth: str = "") -> tuple[dict[str, np.ndarray], bytes, dict[str, str]]:
    """Send `body` once; its outputs, the answer's bytes and the headers that describe them."""
    if body.encoding == "grpc":
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(INFER_RPC)  # bytes in, bytes out: exactly what h2load sends
            raw = call(body.path.read_bytes()[5:], metadata=[("authorization", f"Bearer {auth}")], timeout=30)
        answer = pb.ModelInferResponse.FromString(raw)
        outputs = {o.name: np.frombuffer(answer.raw_output_contents[i], dtype=NUMPY[o.datatype]).reshape(o.shape)
                   if answer.raw_output_contents else np.asarray(o.contents.fp32_contents or o.contents.int64_contents)
                   for i, o in enumerate(answer.outputs)}
        return outputs, raw, {}
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    if body.header_length is None:
        headers["Content-Type"] = "application/json"
    else:
        headers |= {"Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(body.header_length)}
    response = httpx.post(f"{target}/v2/models/{body.model}/infer", content=body.path.read_bytes(), headers=headers,
                          timeout=30)
    response.raise_for_status()
    raw, length = response.content, response.headers.get("inference-header-content-length")
    start = int(length) if length else len(raw)
    outputs = {}
    for output in json.loads(raw[:start])["outputs"]:
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            array = np.asarray(output["data"], dtype=NUMPY[output["datatype"]])
        else:
            array, start = np.frombuffer(raw[start:start + size], dtype=NUMPY[output["datatype"]]), start + size
        outputs[output["name"]] = array.reshape(output["shape"])
    kept = {"content-type": response.headers.get("content-type", "application/octet-stream")}
    if length:
        kept["inference-header-content-length"] = length
    return outputs, raw, kept


def check_answer(target: str, body: Body, auth: str = "") -> tuple[bytes, dict[str, str]]:
    """Before timing a server, make sure it gives the right answer (not fast errors)."""
    outputs, raw, headers = ask(target, body, auth)
    for name, expected in body.expected.items():
        np.testing.assert_allclose(outputs[name].ravel(), expected.ravel(), rtol=1e-4, atol=1e-6,
                                   err_msg=f"{target}: output {name!r} of a {body.encoding} request")
    return raw, headers


# -- servers and the load generators --------------------------------------------------------------

@dataclass
class Server:
    name: str
    command: list[str]  # what starts it; the HTTP (and gRPC) ports are appended by `serving`
    encodings: tuple[str, ...]  # what it speaks: json, binary, grpc
    env: dict[str, str]
    auth: str = ""


@dataclass
class Running:
    url: str
    grpc: str | None
    pid: int
    start_s: float  # from the process starting to its ready probe answering

    def rss_mb(self) -> float:
        """Resident memory of the server's whole process tree."""
        return sum(_rss_kb(pid) for pid in _tree(self.pid)) / 1024


def _tree(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found.append(current := todo.pop())
        todo += children.get(current, [])
    return found


def _rss_kb(pid: int) -> int:
    try:
        return int(re.search(r"^VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))
    except (OSError, AttributeError):
        return 0


@contextmanager
def serving(spec: Server, log: Path) -> Iterator[Running]:
    port = _proc.free_port()
    grpc_port = _proc.free_port() if "grpc" in spec.encodings else None
    ports = [str(port), *([str(grpc_port)] if grpc_port else [])]
    if spec.name.startswith("lakeloop"):  # lakeloop serve takes flags; the other harnesses take ports in order
        ports = ["--port", ports[0], *(["--grpc-port", ports[1]] if grpc_port else [])]
    command = [*spec.command, *ports]
    started = time.monotonic()
    process = _proc.start(command, log, env={"PYTHONPATH": str(ROOT), **spec.env}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _proc.wait_until(_proc.http_ok(f"{url}/v2/health/ready"), spec.name, 120, process, log)
        yield Running(url, f"127.0.0.1:{grpc_port}" if grpc_port else None, process.pid, time.monotonic() - started)
    finally:
        _proc.stop(process.pid, 20)


def load(running: Running, body: Body, connections: int, duration: float, auth: str, scripts: Path) -> dict:
    if body.encoding == "grpc":
        return h2load(running.grpc, body, connections, duration, auth, scripts)
    return wrk(f"{running.url}/v2/models/{body.model}/infer", body, connections, duration, auth, scripts=scripts)


def wrk(url: str, body: Body, connections: int, duration: float, auth: str = "", count_versions: bool = False,
        scripts: Path | None = None) -> dict:
    script = scripts / ("count.lua" if count_versions else "plain.lua")
    command = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
               "--latency", "--timeout", "5s", "-s", str(script), url]
    env = {**os.environ, "WRK_BODY": str(body.path), "WRK_AUTH": auth,  # the key in the environment, not argv
           "WRK_CONTENT_TYPE": "application/json" if body.header_length is None else "application/octet-stream",
           "WRK_HEADER_LENGTH": "" if body.header_length is None else str(body.header_length)}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=duration + 60, check=True).stdout
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
              "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
              "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
              "requests": int(re.search(r"(\d+) requests in", out).group(1)),
              "non_2xx": int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0,
              "socket_errors": sum(map(int, m.groups())) if (m := re.search(
                  r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)) else 0,
              "versions": {v: int(n) for v, n in re.findall(r"^VERSION (\S+) (\d+)$", out, re.M)}}
    return result


def h2load(address: str, body: Body, connections: int, duration: float, auth: str, scripts: Path) -> dict:
    """gRPC load: h2load (nghttp2) posting one framed ModelInferRequest per call on `connections`
    HTTP/2 connections, one call in flight on each. Latencies come from its per-request log.

    h2load takes headers only as arguments, so the key it sends is one minted for the gRPC runs and
    retired right after them (`Stack.grpc_key`), never the server's own."""
    log = scripts / "h2load.tsv"
    log.unlink(missing_ok=True)
    command = ["taskset", "-c", CLIENT_CPU, "h2load", "-t1", f"-c{connections}", "-m1",
               f"-D{max(1, round(duration))}", "-d", str(body.path), "-H", "content-type: application/grpc",
               "-H", "te: trailers", "-H", f"authorization: Bearer {auth}", "--log-file", str(log),
               f"http://{address}{INFER_RPC}"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3), np.int64)
    elapsed_ms = rows[:, 2] / 1e3 if len(rows) else np.zeros(1)
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored, "
                       r"(\d+) timeout", out)
    return {"requests_per_s": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
            "p50_ms": float(np.percentile(elapsed_ms, 50)), "p99_ms": float(np.percentile(elapsed_ms, 99)),
            "requests": len(rows), "non_2xx": int(((rows[:, 1] < 200) | (rows[:, 1] >= 300)).sum()) if len(rows) else 0,
            "socket_errors": int(failed.group(2)) + int(failed.group(3)) if failed else 0, "versions": {}}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


# -- the parts ------------------------------------------------------------------------------------

def throughput(args, work: Path, stack: Stack, registry: Registry, model_dir: Path, bodies: list[Body],
               key: str, scripts: Path) -> tuple[list[dict], dict]:
    """Every server, every request it speaks. Returns the runs and each server's start-up and memory."""
    lakeloop = Server("lakeloop", [sys.executable, "-m", "lakeloop.cli", "serve", "--model", "fraud", "--registry",
                                   registry.repository, "--cpus", SERVER_CPU, "--workers", "1", "--cache-dir",
                                   str(work / "cache"), "--log-repository", "bench-logs", "--poll-seconds", "1"],
                      ("json", "binary", "grpc"), stack.serve_env(), key)
    # the same server on uvicorn and grpc.aio: what lakeloop's compiled HTTP/1.1 and HTTP/2 front gains
    on_uvicorn = Server("lakeloop on uvicorn", [*lakeloop.command, "--cache-dir", str(work / "cache-uvicorn"),
                                                "--http", "uvicorn"], ("json", "binary", "grpc"), stack.serve_env(),
                        key)
    servers = [lakeloop, on_uvicorn,
               Server("floor", ["taskset", "-c", SERVER_CPU, sys.executable,
                                str(ROOT / "benchmarks" / "_floor_server.py"), str(work / "floor-answers.json")],
                      ("json", "binary", "grpc"), {})]
    if KSERVE_PYTHON.exists():
        servers.append(Server("KServe", ["taskset", "-c", SERVER_CPU, str(KSERVE_PYTHON),
                                         str(ROOT / "benchmarks" / "_kserve_server.py"), str(model_dir / "model.onnx"),
                                         "fraud"], ("json", "binary", "grpc"), {}))
    else:
        print(f"note: {KSERVE_PYTHON} is missing (`make bench-tools` builds it): KServe skipped")
    servers.append(Server("naive FastAPI+torch", ["taskset", "-c", SERVER_CPU, sys.executable,
                                                   str(ROOT / "benchmarks" / "_naive_server.py"), str(model_dir)],
                          ("json",), {}))
    runs, footprint = [], {}
    grpc_key = ""
    for spec in servers:
        with serving(spec, work / f"{spec.name.split()[0]}.log") as running:
            answers = {"http": {}, "grpc": {}}
            minted = False
            for body in bodies:
                if body.encoding not in spec.encodings:
                    continue
                if body.encoding == "grpc" and spec.auth and not minted:
                    grpc_key, minted = stack.grpc_key(running.grpc, body), True  # h2load's key: see h2load()
                # the other servers check no key: they get the (by then retired) gRPC key, so every server
                # receives requests of the same bytes
                auth = spec.auth if spec.auth and body.encoding != "grpc" else grpc_key
                target = running.grpc if body.encoding == "grpc" else running.url
                raw, headers = check_answer(target, body, auth)
                if spec is lakeloop:  # the floor answers exactly these bytes
                    kind = "grpc" if body.encoding == "grpc" else "http"
                    answer = work / f"answer-{body.rows}.{body.encoding}"
                    answer.write_bytes(raw)
                    size = body.path.stat().st_size - (5 if kind == "grpc" else 0)
                    answers[kind][str(size)] = str(answer) if kind == "grpc" else {"path": str(answer),
                                                                                   "headers": headers}
                for connections in args.connections:
                    # warm up at the run's own concurrency: a server's state after one load (the inference-log
                    # writer's CPU share, caches) is not carried into a run of another
                    load(running, body, connections, min(2, args.duration), auth, scripts)
                    result = load(running, body, connections, args.duration, auth, scripts)
                    runs.append({"server": spec.name, "model": body.model, "batch": body.rows,
                                 "encoding": body.encoding, "connections": connections, **result})
                    print(f"  {spec.name:<20} {body.encoding:<6} batch {body.rows:>2}  {connections} conn  "
                          f"{result['requests_per_s']:>8.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
                          f"p99 {result['p99_ms']:6.2f} ms  errors {result['non_2xx'] + result['socket_errors']}",
                          flush=True)
            footprint[spec.name] = {"start_s": round(running.start_s, 2), "rss_mb": round(running.rss_mb(), 1)}
            if spec.auth:  # lakeloop, on either HTTP layer
                footprint[spec.name]["log"] = log_counts(running.url, key)
            if minted:
                stack.retire_grpc_key()
            if spec is lakeloop:
                (work / "floor-answers.json").write_text(json.dumps(answers))
    return runs, footprint


def batching(args, work: Path, scripts: Path) -> list[dict]:
    """A model whose own cost dominates: lakeloop unbatched vs adaptive batching, 1-row binary requests."""
    model = wide_mlp(work / "wide.onnx")
    features = np.random.default_rng(3).normal(size=(1, 512)).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = {"scores": session.run(["scores"], {"features": features})[0]}
    body = write_bodies(work, "wide", 1, {"features": features}, expected)["binary"]
    key = secrets.token_urlsafe(24)
    base = [sys.executable, "-m", "lakeloop.cli", "serve", "--onnx", str(model), "--name", "wide", "--cpus",
            SERVER_CPU, "--workers", "1", "--log-dir", str(work / "wide-logs")]
    delays = sorted({0, args.batch_delay_us})
    variants = {"lakeloop": [*base, "--no-batching"]} | {f"lakeloop batched ({delay} us)": [
        *base, "--max-batch-delay-us", str(delay), "--preferred-batch", "8"] for delay in delays}
    runs = []
    for name, command in variants.items():
        spec = Server(name, command, ("binary",), {"LAKELOOP_API_KEYS": key}, key)  # the key in the environment
        with serving(spec, work / "wide.log") as running:
            check_answer(running.url, body, key)
            load(running, body, 8, min(2, args.duration), key, scripts)  # warm up
            for connections in args.connections:
                result = load(running, body, connections, args.duration, key, scripts)
                runs.append({"server": name, "model": "wide", "batch": 1, "encoding": "binary",
                             "connections": connections, **result})
                print(f"  {name:<28} {connections} conn  {result['requests_per_s']:>8.0f} req/s  "
                      f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                      f"errors {result['non_2xx'] + result['socket_errors']}", flush=True)
    return runs


def swap(args, work: Path, stack: Stack, registry: Registry, model_dir: Path, body: Body, key: str,
         scripts: Path) -> dict:
    good2 = raw_feature_model(work / "v2.onnx", seed=1)
    tampered = raw_feature_model(work / "v3.onnx", seed=2)
    broken = nan_on_zero_amount(model_dir / "model.onnx", work / "v4.onnx")
    for path in (good2, tampered, broken):
        registry.register("fraud", {"model.onnx": path}, {"variant": path.stem}, actor="benchmark")
    main = lakefs.Repository(registry.repository, client=stack.client()).branch("main")
    main.object("models/fraud/v3/model.onnx").upload(good2.read_bytes())  # v3's weights no longer match its manifest
    main.commit("benchmark: tamper with v3")
    command = [sys.executable, "-m", "lakeloop.cli", "serve", "--model", "fraud", "--registry", registry.repository,
               "--cpus", SERVER_CPU, "--workers", "1", "--cache-dir", str(work / "cache-swap"), "--poll-seconds", "1",
               "--log-repository", "bench-logs"]
    moves = [(0.2, 2, "hot swap to a new version"), (0.45, 3, "tampered version"), (0.7, 4, "NaN on a smoke row")]
    timeline = []
    spec = Server("lakeloop (swap)", command, ("json",), stack.serve_env())
    with serving(spec, work / "lakeloop-swap.log") as running:
        url = running.url

        def promote_later() -> None:
            # Each move waits until the server has swapped to it or refused it: on a slow machine a
            # move made before the previous one was checked would skip that one, not test it.
            started = time.monotonic()
            for done, (at, version, why) in enumerate(moves, start=2):  # the first load is outcome 1
                time.sleep(max(0.0, started + at * args.swap_duration - time.monotonic()))
                registry.promote("fraud", version, "production", actor="benchmark", reason=why)
                moved = time.monotonic() - started
                deadline = time.monotonic() + 60
                while sum(swap_outcomes(url, key).values()) < done and time.monotonic() < deadline:
                    time.sleep(0.1)
                timeline.append((round(moved, 1), round(time.monotonic() - started, 1), version, why))

        mover = threading.Thread(target=promote_later)
        mover.start()
        result = wrk(f"{url}/v2/models/fraud/infer", body, 8, args.swap_duration, key, count_versions=True,
                     scripts=scripts)
        mover.join()
        outcomes = swap_outcomes(url, key)
    late = [version for _, settled, version, _ in timeline if settled > args.swap_duration]
    if late:
        sys.exit(f"the server settled v{late} after the traffic stopped: the swap test ran without load there "
                 f"(try a longer --swap-duration)")
    return {**result, "timeline": timeline, "refused": outcomes.get("refused", 0),
            "swapped": outcomes.get("swapped", 0)}


def metrics_of(url: str, key: str) -> str:
    """The server's /metrics text."""
    return httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}, timeout=10).text


def log_counts(url: str, key: str) -> dict[str, int]:
    """Rows scored, and the inference log's rows written and dropped, read from /metrics."""
    metrics = metrics_of(url, key)

    def total(name: str) -> int:
        return sum(int(float(n)) for n in re.findall(rf"^{name}(?:{{[^}}]*}})? ([\d.e+]+)$", metrics, re.M))

    return {"scored": total("lakeloop_inference_rows_total"), "written": total("lakeloop_inference_log_written_rows"),
            "dropped": total("lakeloop_inference_log_dropped_rows")}


def swap_outcomes(url: str, key: str) -> dict[str, int]:
    """The server's swap counters by outcome (swapped, refused), read from /metrics."""
    return {o: int(n) for o, n in re.findall(r'swaps_total\{model="fraud",outcome="(\w+)"\} (\d+)',
                                             metrics_of(url, key))}


@contextmanager
def idle_latency(microseconds: int | None) -> Iterator[None]:
    """With a value, every CPU keeps to idle states that wake within it while the run lasts (the
    kernel's PM QoS request, dropped when the file is closed). On a virtual machine an idle vCPU
    halts and the host may run other work on it: the next request then finds its caches cold."""
    if microseconds is None:
        yield
        return
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as exc:
        sys.exit(f"--idle-latency-us needs /dev/cpu_dma_latency writable (root): {exc.strerror}")
    try:
        os.write(fd, microseconds.to_bytes(4, sys.byteorder, signed=True))
        print(f"CPU idle wake-up latency held at {microseconds} us for this run")
        yield
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="Seconds per load run.")
    parser.add_argument("--swap-duration", type=float, default=60)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--batch-delay-us", type=int, default=2000, help="lakeloop's --max-batch-delay-us in the "
                        "batching part, besides 0 (no wait: what arrived together is merged).")
    parser.add_argument("--part", choices=["all", "throughput", "batching", "swap"], default="all")
    parser.add_argument("--idle-latency-us", type=int, default=None,
                        help="Hold the machine's CPU idle wake-up latency at this many microseconds for the run "
                             "(/dev/cpu_dma_latency, root only; 0: CPUs poll instead of halting, as tuned's "
                             "latency-performance profile does). Default: the machine's own idle policy.")
    args = parser.parse_args()
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {package}")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs: the servers on CPU 0, the load generator on CPU 1")
    with tempfile.TemporaryDirectory(prefix="lakeloop-serve-bench-") as tmp, \
            idle_latency(args.idle_latency_us), embedded_stack(Path(tmp) / "stack") as stack:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        model = raw_feature_model(model_dir / "model.onnx", seed=0, state_dict_path=model_dir / "net.pt")
        registry = Registry(stack.client(), "bench-models", VaultSigner(stack.vault("pipeline")))
        registry.register("fraud", {"model.onnx": model}, {"variant": "fp32"}, actor="benchmark")
        registry.promote("fraud", 1, "production", actor="benchmark")
        key = serving_keys(stack.vault("serving"))[0]
        spec = FeatureSpec.from_json((model_dir / "features.json").read_text())
        frame = generate_transactions(64, seed=21)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        bodies: list[Body] = []
        for batch in (1, 64):
            columns = {k: np.asarray(v).reshape(-1, 1) for k, v in feature_columns(frame.head(batch), spec).items()}
            expected = {"probability": session.run(["probability"], onnx_inputs(frame.head(batch), spec))[0]}
            bodies += write_bodies(work, "fraud", batch, columns, expected).values()
        scripts = work
        (scripts / "plain.lua").write_text(WRK_SCRIPT)
        (scripts / "count.lua").write_text(WRK_COUNT_SCRIPT)
        report: dict = {"duration_s": args.duration, "idle_latency_us": args.idle_latency_us}
        if args.part in ("all", "throughput"):
            print(f"throughput: load on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}, {args.duration:.0f} s per run")
            report["throughput"], report["footprint"] = throughput(args, work, stack, registry, model_dir, bodies,
                                                                   key, scripts)
            print_ratios(report["throughput"], report["footprint"])
        if args.part in ("all", "batching"):
            print("\nadaptive batching: a wide MLP (512 → 1024 → 1024 → 16), 1-row binary requests")
            report["batching"] = batching(args, work, scripts)
            print_batching(report["batching"])
        if args.part in ("all", "swap"):
            print(f"\nswap under load: {args.swap_duration:.0f} s at 8 connections, 1-row requests")
            one_row = next(b for b in bodies if b.rows == 1 and b.encoding == "json")
            result = swap(args, work, stack, registry, model_dir, one_row, key, scripts)
            report["swap"] = result
            print(f"  {result['requests']} requests, {result['non_2xx']} non-200, {result['socket_errors']} socket "
                  f"errors; answered by version: {result['versions']}; refused swaps: {result['refused']}")
            for at, settled, version, why in result["timeline"]:
                print(f"  t={at:5.1f}s  production -> v{version} ({why}); settled by t={settled:.1f}s")
            broken = sum(n for v, n in result["versions"].items() if v in ("3", "4"))
            counted = sum(result["versions"].values())
            print(f"  answers from a broken version: {broken} (of {counted} answers whose version was read)")
            if counted != result["requests"] or not {"1", "2"} <= set(result["versions"]):
                sys.exit("the swap test could not read every answer's version: its result is not valid")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "serving.json").write_text(json.dumps(report, indent=2))


def print_ratios(rows: list[dict], footprint: dict) -> None:
    """lakeloop's throughput against each other server's, case by case, and the issue's targets."""
    by = {(r["server"], r["encoding"], r["batch"], r["connections"]): r for r in rows}
    cases = sorted({k[1:] for k in by if k[0] == "lakeloop"})
    others = [o for o in ("floor", "KServe", "naive FastAPI+torch", "lakeloop on uvicorn")
              if any(k[0] == o for k in by)]
    print("\nlakeloop per case: req/s, p50/p99 ms, and its throughput as a ratio of each other server's "
          "(p99 of the other in brackets)")
    print(f"  {'case':<24} {'req/s':>8} {'p50':>6} {'p99':>6}  " + "  ".join(f"{o[:14]:>20}" for o in others))
    missed = []
    for encoding, batch, connections in cases:
        mine = by[("lakeloop", encoding, batch, connections)]
        cells = []
        for other in others:
            theirs = by.get((other, encoding, batch, connections))
            if theirs is None:
                cells.append(f"{'-':>20}")
                continue
            ratio = mine["requests_per_s"] / theirs["requests_per_s"]
            cells.append(f"{ratio:>10.2f}x ({theirs['p99_ms']:5.2f} ms)")
            if other == "KServe" and (ratio < 3 or mine["p99_ms"] > theirs["p99_ms"]):
                missed.append(f"vs KServe {encoding} batch {batch} {connections} conn: {ratio:.2f}x, p99 "
                              f"{mine['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms (target >= 3x at no worse p99)")
            if other == "floor" and batch == 1 and ratio < 0.5:
                missed.append(f"vs the floor {encoding} batch 1 {connections} conn: {ratio:.2f}x (target >= 0.5x)")
        print(f"  {encoding + ' batch ' + str(batch) + ', ' + str(connections) + ' conn':<24} "
              f"{mine['requests_per_s']:>8.0f} {mine['p50_ms']:>6.2f} {mine['p99_ms']:>6.2f}  " + "  ".join(cells))
    print("\nstart-up (process start to ready) and resident memory, one worker:")
    for name, f in footprint.items():
        print(f"  {name:<20} {f['start_s']:6.2f} s  {f['rss_mb']:7.1f} MB")
    for name, f in footprint.items():
        if "log" in f:  # logging that fell behind and shed rows would flatter the figures above
            log = f["log"]
            print(f"{name}'s inference log: {log['scored']:,} rows scored, {log['written']:,} written, "
                  f"{log['dropped']:,} dropped (the rest still pending when counted)")
    print("\ntargets missed:" if missed else "\nevery throughput target met")
    for line in missed:
        print(f"  {line}")


def print_batching(rows: list[dict]) -> None:
    plain = {r["connections"]: r for r in rows if "batched" not in r["server"]}
    for r in rows:
        if "batched" in r["server"] and r["connections"] in plain:
            ratio = r["requests_per_s"] / plain[r["connections"]]["requests_per_s"]
            target = " (target >= 1.5x)" if r["connections"] == 8 else ""
            print(f"  {r['server'][9:]} vs unbatched, {r['connections']} conn: {ratio:.2f}x req/s{target}, p99 "
                  f"{r['p99_ms']:.2f} vs {plain[r['connections']]['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
