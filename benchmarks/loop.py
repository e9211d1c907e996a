"""The loop's own latencies: trigger → running retrain, and `make run` wall time.

Trigger latency: on a fresh `lakeloop dev up --project examples/fraud`, POST /hooks/retrain N times
(what a CI system does; one at a time) and time, from just before the POST, (a) the retrain/fraud
run's creation by the `retrain fraud on request` automation and (b) its start on the worker (state
Running: the flow process has started and loaded the flow). Side by side: the stack's worker, which polls every second,
against a worker with Prefect's default polling interval on the same pool. The benchmark stack has
no data, so each retrain fails at its first task right after starting; only its start is timed.

`make run` wall time: `lakeloop demo` on a fresh state directory, against the 5-minute target.

Usage: python benchmarks/loop.py [--events 5] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from lakeloop.devstack import _proc, stack  # noqa: E402

OUT = ROOT / "benchmarks" / "out"


def lakeloop(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LAKEFS_", "LAKELOOP_"))}
    return subprocess.run([sys.executable, "-m", "lakeloop.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**env, "COLUMNS": "200"})


def webhook_token(state_dir: Path, vault_url: str) -> str:
    """The receiver's bearer token, read with the webhook's own AppRole (as the receiver does)."""
    from lakeloop.secrets import WEBHOOK_PATH, VaultClient
    from lakeloop.serving import vault_settings

    approle = state_dir / "vault" / "webhook.approle.json"
    return VaultClient(vault_settings(vault_url, approle_file=str(approle))).read_key(WEBHOOK_PATH, "token")


def trigger_latencies(api: str, hook: str, token: str, events: int, label: str) -> list[dict]:
    """POST /hooks/retrain `events` times; each: seconds to the run's creation and to its start."""
    retrain = httpx.get(f"{api}/deployments/name/retrain/fraud").json()["id"]
    samples = []
    for i in range(events):
        reason = f"benchmark {label} {i} {time.time_ns()}"
        sent = time.time()
        body = {"project": "fraud", "reason": reason, "requested_by": "benchmark"}
        answer = httpx.post(f"{hook}/hooks/retrain", json=body, headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        answer.raise_for_status()
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:
            runs = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [retrain]}}}).json()
            run = next((r for r in runs if reason in r["parameters"].get("reason", "") and r["start_time"]
                        and r["state"]["type"] in ("FAILED", "COMPLETED", "CRASHED")), None)
            if run:
                break
            time.sleep(0.2)
        if run is None:
            raise SystemExit(f"no retrain run started and ended within 120 s of event {i} ({label})")
        created = _ts(run["created"]) - sent
        started = _ts(run["start_time"]) - sent
        samples.append({"created_s": created, "running_s": started})
        print(f"  {label} event {i + 1}: run created after {created:.2f} s, running after {started:.2f} s")
    return samples


def _ts(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def summary(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def measure_triggers(events: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        up = lakeloop("dev", "up", "--state-dir", str(state), "--project", "examples/fraud")
        if up.returncode != 0:
            raise SystemExit(up.stdout + up.stderr)
        baseline_pid = None
        try:
            services = stack.load(state)
            api, hook = services["prefect"].url + "/api", services["webhook"].url
            token = webhook_token(state, services["vault"].url)
            print(f"trigger latency, {events} CI requests each (POST /hooks/retrain → automation → worker):")
            fast = trigger_latencies(api, hook, token, events, "dev stack worker (polls every 1 s)")
            # the same pool, served by a worker with Prefect's default polling interval instead
            _proc.stop(services["worker"].pid)
            env = stack._flow_env(state, services)
            process = _proc.start([sys.executable, "-m", "prefect", "worker", "start", "--pool", stack.WORK_POOL,
                                   "--type", "process", "--name", "baseline"], state / "logs" / "baseline-worker.log",
                                  env=env, cwd=ROOT)
            baseline_pid = process.pid
            from prefect.settings import PREFECT_WORKER_QUERY_SECONDS

            default_poll = PREFECT_WORKER_QUERY_SECONDS.value()
            _proc.wait_until(lambda: any(w["name"] == "baseline" and w["status"] == "ONLINE" for w in httpx.post(
                f"{api}/work_pools/{stack.WORK_POOL}/workers/filter", json={}).json()), "baseline worker", 60)
            slow = trigger_latencies(api, hook, token, events, f"worker with Prefect's default ({default_poll:.0f} s)")
        finally:
            if baseline_pid:
                _proc.stop(baseline_pid)
            lakeloop("dev", "down", "--state-dir", str(state))
    return {"events": events, "default_poll_s": default_poll, "dev_stack": fast, "default": slow}


def measure_demo() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        demo = lakeloop("demo", "--project", "examples/fraud", "--state-dir", str(Path(tmp) / "state"))
        elapsed = time.monotonic() - started
    if demo.returncode != 0:
        raise SystemExit(demo.stdout[-3000:] + demo.stderr[-3000:])
    retrains = demo.stdout.count("deploy-model: v")
    return {"wall_s": elapsed, "retrains": retrains}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5, help="CI requests per worker")
    parser.add_argument("--skip-demo", action="store_true", help="only the trigger latency")
    args = parser.parse_args()
    report = {"triggers": measure_triggers(args.events)}
    t = report["triggers"]
    fast_created, fast_running = summary(t["dev_stack"], "created_s"), summary(t["dev_stack"], "running_s")
    slow_created, slow_running = summary(t["default"], "created_s"), summary(t["default"], "running_s")
    print(f"\nmedian over {args.events} events     run created   run running")
    print(f"  dev stack worker (1 s poll)   {fast_created:8.2f} s   {fast_running:8.2f} s")
    print(f"  default worker ({t['default_poll_s']:.0f} s poll)     {slow_created:8.2f} s   {slow_running:8.2f} s")
    print(f"  ratio (default / dev stack)   {'':>8}     {slow_running / fast_running:8.2f}x")
    if not args.skip_demo:
        print("\nmake run (lakeloop demo on a fresh state directory) ...")
        report["demo"] = measure_demo()
        d = report["demo"]
        print(f"  make run: {d['wall_s']:.0f} s for the whole loop ({d['retrains']} triggered retrains deployed); "
              f"target 300 s: {d['wall_s'] / 300:.2f} of it")
    OUT.mkdir(exist_ok=True)
    (OUT / "loop.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
