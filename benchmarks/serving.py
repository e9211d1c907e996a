"""HTTP serving, side by side: `lakeloop serve` vs a naive FastAPI + pydantic + torch server vs KServe.

One load generator (wrk, pinned to CPU 1) against each server in turn (pinned to CPU 0), all on the
V2 JSON protocol with identical request bytes: 1-row and 64-row requests, 1 and 8 connections.
lakeloop runs as in production: from the signed registry (lakeFS + Vault started here), API key
required, inference logs committed to a lakeFS branch. Then the swap test: a 60 s run at 8
connections with a hot swap to a new version and two promotions of broken versions (tampered with,
NaN on a smoke row): it must see zero failed requests and no answer from a broken version.

Usage: python benchmarks/serving.py [--duration 10] [--swap-duration 60] [--part all|throughput|swap]
Needs wrk (apt-get install wrk); KServe runs from .venv-kserve (`make bench-tools` builds both);
without that venv KServe is skipped with a note.
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import lakefs  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from benchmarks._fraud import generate_transactions  # noqa: E402
from benchmarks._models import nan_on_zero_amount, raw_feature_model  # noqa: E402
from lakeloop.compression import onnx_inputs  # noqa: E402
from lakeloop.devstack import _proc, bao  # noqa: E402
from lakeloop.devstack.lakefs import start_process  # noqa: E402
from lakeloop.modeling.features import FeatureSpec  # noqa: E402
from lakeloop.registry import Registry, VaultSigner  # noqa: E402
from lakeloop.secrets import SERVING_PATH, VaultClient, VaultSettings  # noqa: E402

KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
SERVER_CPU, CLIENT_CPU = "0", "1"
WRK_SCRIPT = """
local f = assert(io.open(os.getenv("WRK_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
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

    def client(self) -> lakefs.Client:
        return lakefs.Client(host=self.lakefs_url, username=self.key_id, password=self.secret)

    def vault(self, consumer: str) -> VaultClient:
        path = self.credentials[consumer]
        return VaultClient(VaultSettings(address=self.vault_url, auth_method="approle",
                                         role_id_ref=f"file:{path}#role_id", secret_id_ref=f"file:{path}#secret_id"))

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
        credentials = bao.bootstrap(vault.address, token, root, (key_id, secret), revoke_root=True)
        yield Stack(url, vault.address, credentials, key_id, secret, root)
    finally:
        _proc.stop(vault.process_pid)
        _proc.stop(lakefs_process.pid)


# -- servers and the load generator ---------------------------------------------------------------

@contextmanager
def server(command: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    process = _proc.start(command, log, env={"PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _proc.wait_until(_proc.http_ok(f"{url}/v2/health/ready"), Path(command[-1]).name, 120, process, log)
        yield url
    finally:
        _proc.stop(process.pid, 20)


def wrk(url: str, body: Path, connections: int, duration: float, auth: str = "", count_versions: bool = False,
        scripts: Path | None = None) -> dict:
    script = scripts / ("count.lua" if count_versions else "plain.lua")
    command = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
               "--latency", "--timeout", "5s", "-s", str(script), url]
    env = {**os.environ, "WRK_BODY": str(body), "WRK_AUTH": auth}
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


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def v2_body(batch: dict[str, np.ndarray]) -> bytes:
    inputs = [{"name": k, "shape": [len(v), 1], "datatype": "BYTES" if v.dtype == object else "FP32",
               "data": v.ravel().tolist()} for k, v in batch.items()]
    return json.dumps({"inputs": inputs}).encode()


def check_answer(url: str, body: bytes, expected: np.ndarray, auth: str = "") -> None:
    """Before timing a server, make sure it gives the right answer (not fast errors)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {auth}"} if auth else {})}
    answer = httpx.post(f"{url}/v2/models/fraud/infer", content=body, headers=headers, timeout=30)
    answer.raise_for_status()
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    served = np.asarray(outputs["probability"], dtype=np.float32).ravel()
    np.testing.assert_allclose(served, expected.ravel(), rtol=1e-4, atol=1e-6)


# -- the two parts --------------------------------------------------------------------------------

def throughput(args, work: Path, stack: Stack, registry: Registry, model_dir: Path, bodies: dict, expected: dict,
               key: str, scripts: Path) -> list[dict]:
    servers = {
        "lakeloop": ([sys.executable, "-m", "lakeloop.cli", "serve", "--model", "fraud", "--registry",
                      registry.repository, "--cpus", SERVER_CPU, "--workers", "1", "--cache-dir", str(work / "cache"),
                      "--log-repository", "bench-logs"], stack.serve_env(), key),
        "naive FastAPI+torch": (["taskset", "-c", SERVER_CPU, sys.executable,
                                 str(ROOT / "benchmarks" / "_naive_server.py"), str(model_dir)], {}, ""),
    }
    if KSERVE_PYTHON.exists():
        servers["KServe"] = (["taskset", "-c", SERVER_CPU, str(KSERVE_PYTHON),
                              str(ROOT / "benchmarks" / "_kserve_server.py"), str(model_dir / "model.onnx")], {}, "")
    else:
        print(f"note: {KSERVE_PYTHON} is missing (`make bench-tools` builds it): KServe skipped")
    rows = []
    for name, (command, env, auth) in servers.items():
        port = _proc.free_port()
        full = [*command, "--port", str(port)] if name == "lakeloop" else [*command, str(port)]
        with server(full, port, work / f"{name.split()[0]}.log", env) as url:
            for batch, body in bodies.items():
                check_answer(url, body.read_bytes(), expected[batch], auth)
                wrk(f"{url}/v2/models/fraud/infer", body, 8, 2, auth, scripts=scripts)  # warm up
                for connections in args.connections:
                    result = wrk(f"{url}/v2/models/fraud/infer", body, connections, args.duration, auth,
                                 scripts=scripts)
                    rows.append({"server": name, "batch": batch, "connections": connections, **result})
                    print(f"  {name:<20} batch {batch:>2}  {connections} conn  {result['requests_per_s']:>8.0f} req/s  "
                          f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                          f"errors {result['non_2xx'] + result['socket_errors']}", flush=True)
    return rows


def swap(args, work: Path, stack: Stack, registry: Registry, model_dir: Path, bodies: dict, key: str,
         scripts: Path) -> dict:
    good2 = raw_feature_model(work / "v2.onnx", seed=1)
    tampered = raw_feature_model(work / "v3.onnx", seed=2)
    broken = nan_on_zero_amount(model_dir / "model.onnx", work / "v4.onnx")
    for path in (good2, tampered, broken):
        registry.register("fraud", {"model.onnx": path}, {"variant": path.stem}, actor="benchmark")
    main = lakefs.Repository(registry.repository, client=stack.client()).branch("main")
    main.object("models/fraud/v3/model.onnx").upload(good2.read_bytes())  # v3's weights no longer match its manifest
    main.commit("benchmark: tamper with v3")
    port = _proc.free_port()
    command = [sys.executable, "-m", "lakeloop.cli", "serve", "--model", "fraud", "--registry", registry.repository,
               "--cpus", SERVER_CPU, "--workers", "1", "--cache-dir", str(work / "cache-swap"), "--poll-seconds", "1",
               "--log-repository", "bench-logs", "--port", str(port)]
    moves = [(0.3, 2, "hot swap to a new version"), (0.55, 3, "tampered version"), (0.8, 4, "NaN on a smoke row")]
    timeline = []
    with server(command, port, work / "lakeloop-swap.log", stack.serve_env()) as url:
        def promote_later() -> None:
            started = time.monotonic()
            for at, version, why in moves:
                time.sleep(max(0.0, started + at * args.swap_duration - time.monotonic()))
                registry.promote("fraud", version, "production", actor="benchmark", reason=why)
                timeline.append((round(time.monotonic() - started, 1), version, why))

        mover = threading.Thread(target=promote_later)
        mover.start()
        result = wrk(f"{url}/v2/models/fraud/infer", bodies[1], 8, args.swap_duration, key, count_versions=True,
                     scripts=scripts)
        mover.join()
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    found = re.search(r'swaps_total\{model="fraud",outcome="refused"\} (\d+)', metrics)
    refused = int(found.group(1)) if found else 0
    return {**result, "timeline": timeline, "refused": refused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10, help="Seconds per wrk run.")
    parser.add_argument("--swap-duration", type=float, default=60)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--part", choices=["all", "throughput", "swap"], default="all")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install wrk")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs: the servers on CPU 0, wrk on CPU 1")
    with tempfile.TemporaryDirectory(prefix="lakeloop-serve-bench-") as tmp, \
            embedded_stack(Path(tmp) / "stack") as stack:
        work = Path(tmp)
        model_dir = work / "model"
        model_dir.mkdir()
        model = raw_feature_model(model_dir / "model.onnx", seed=0, state_dict_path=model_dir / "net.pt")
        registry = Registry(stack.client(), "bench-models", VaultSigner(stack.vault("pipeline")))
        registry.register("fraud", {"model.onnx": model}, {"variant": "fp32"}, actor="benchmark")
        registry.promote("fraud", 1, "production", actor="benchmark")
        key = stack.vault("serving").read_key(SERVING_PATH, "api_keys").split(",")[0]
        spec = FeatureSpec.from_json((model_dir / "features.json").read_text())
        frame = generate_transactions(64, seed=21)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        bodies, expected = {}, {}
        for batch in (1, 64):
            feeds = onnx_inputs(frame.head(batch), spec)
            bodies[batch] = work / f"body-{batch}.json"
            bodies[batch].write_bytes(v2_body(feeds))
            expected[batch] = session.run(["probability"], feeds)[0]
        scripts = work
        (scripts / "plain.lua").write_text(WRK_SCRIPT)
        (scripts / "count.lua").write_text(WRK_COUNT_SCRIPT)
        report: dict = {"duration_s": args.duration}
        if args.part in ("all", "throughput"):
            print(f"throughput: wrk on CPU {CLIENT_CPU}, servers on CPU {SERVER_CPU}, {args.duration:.0f} s per run")
            report["throughput"] = throughput(args, work, stack, registry, model_dir, bodies, expected, key, scripts)
            print_ratios(report["throughput"])
        if args.part in ("all", "swap"):
            print(f"swap under load: {args.swap_duration:.0f} s at 8 connections, 1-row requests")
            result = swap(args, work, stack, registry, model_dir, bodies, key, scripts)
            report["swap"] = result
            print(f"  {result['requests']} requests, {result['non_2xx']} non-200, {result['socket_errors']} socket "
                  f"errors; answered by version: {result['versions']}; refused swaps: {result['refused']}")
            for at, version, why in result["timeline"]:
                print(f"  t={at:5.1f}s  production -> v{version} ({why})")
            broken = sum(n for v, n in result["versions"].items() if v in ("3", "4"))
            counted = sum(result["versions"].values())
            print(f"  answers from a broken version: {broken} (of {counted} answers whose version was read)")
            if counted != result["requests"] or not {"1", "2"} <= set(result["versions"]):
                sys.exit("the swap test could not read every answer's version: its result is not valid")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "serving.json").write_text(json.dumps(report, indent=2))


def print_ratios(rows: list[dict]) -> None:
    by = {(r["server"], r["batch"], r["connections"]): r for r in rows}
    print("\nlakeloop vs the others (throughput ratio; p99 lakeloop vs other):")
    for other in ("naive FastAPI+torch", "KServe"):
        for batch, connections in sorted({(r["batch"], r["connections"]) for r in rows}):
            mine, theirs = by.get(("lakeloop", batch, connections)), by.get((other, batch, connections))
            if mine and theirs:
                print(f"  vs {other:<20} batch {batch:>2}, {connections} conn: "
                      f"{mine['requests_per_s'] / theirs['requests_per_s']:5.2f}x req/s, "
                      f"p99 {mine['p99_ms']:.2f} vs {theirs['p99_ms']:.2f} ms")


if __name__ == "__main__":
    main()
