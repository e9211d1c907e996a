"""`lakeloop demo` (what `make run` runs): the whole loop on the embedded stack, with progress and a summary.

The retraining runs are started by the stack's automations, never by this command: it publishes
data, sends traffic, runs monitor-drift and follows the runs the triggers start (`flows.loop`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lakeloop.cli._app import (
    DEFAULT_STATE,
    StateDir,
    _prefect_api,
    _stack_up,
    app,
    console,
    out,
    prefect_console_handlers,
)
from lakeloop.errors import LakeloopError


@app.command("demo")
def demo(
    state_dir: StateDir = DEFAULT_STATE,
    project: Annotated[str, typer.Option(help="The example project to drive: its folder (with a generate.py, as "
                                              "in examples/) or its name under LAKELOOP_PROJECTS.")] = "examples/fraud",
    rows: Annotated[int, typer.Option(min=500, help="Rows in each published sample batch.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Seed of the sample data and traffic.")] = 7,
    keep_up: Annotated[bool, typer.Option(help="Leave the stack running to explore the Prefect UI.")] = False,
) -> None:
    """The whole loop: publish data → retrain (triggered) → serve → traffic → monitor-drift → drifted
    traffic → drift → retrain (triggered) → a new batch → lakeFS webhook → retrain; then a summary.

    Starts the embedded stack (`lakeloop dev up`) unless it is running, adds the project to it
    (`lakeloop project add`), and stops what it started unless --keep-up.
    """
    from lakeloop.devstack import stack
    from lakeloop.project import resolve_project

    spec = resolve_project(project)

    started = time.monotonic()
    if not out.is_terminal and "COLUMNS" not in os.environ:  # CI logs: one readable table, not 80 squeezed columns
        out.width = 180
    already = bool(stack.running(state_dir))
    services = _stack_up(state_dir)
    ui = services["prefect"].url
    try:
        with _prefect_api(state_dir, ui + "/api"):
            _runs_log_to_the_ui_only()
            stack.add_project(state_dir, spec, log=lambda m: console.print(f"  {m}", highlight=False))
            summary = _LoopRun(services, state_dir.resolve(), spec, rows, seed).run()
        summary.add_row("", "", "", "", "", "", f"[bold]{time.monotonic() - started:.0f} s in all[/]")
        out.print(summary)
        out.print(f"Prefect UI: {ui}  (deployments: {ui}/deployments, runs: {ui}/runs, "
                  f"drift reports: {ui}/artifacts)")
        if keep_up:
            out.print(f"The stack keeps running: `source {state_dir / 'env'}`; stop it with `lakeloop dev down`")
    finally:
        if not (keep_up or already):
            stack.down(state_dir, log=lambda m: console.print(f"  {m}"))


def _runs_log_to_the_ui_only() -> None:
    """The flows this command runs in-process log to the Prefect UI; the terminal shows the steps."""
    import logging

    from prefect.logging.configuration import setup_logging

    setup_logging()
    for handler in prefect_console_handlers():
        handler.setLevel(logging.CRITICAL)


class _LoopRun:
    """The steps of `lakeloop demo`, each printed as it happens, then one summary table."""

    def __init__(self, services: dict, state_dir: Path, project, rows: int, seed: int) -> None:
        from lakeloop.project import project_module

        self.services, self.state_dir, self.project, self.rows, self.seed = services, state_dir, project, rows, seed
        self.ui = services["prefect"].url
        self.serving = services["serving"].url
        self.data = project.data
        self.metric = project.primary_metric
        self.described = getattr(project_module(project, "generate"), "DESCRIPTIONS", {})
        self.seen: set[str] = set()
        self.summary = Table("step", "started by", "data commit", "model", f"{self.metric} (test split)", "drift",
                             "result", title=f"the loop, end to end: {project.name}")
        for column in self.summary.columns:
            column.overflow = "fold"

    def run(self) -> Table:
        from flows import loop

        step = self._step
        step(1, "ingest-data: publish a good batch, quarantine a broken one")
        good, broken = loop.write_sample_batches(self.state_dir / "samples", self.project, self.rows, self.seed)
        since = loop.utcnow()
        published = self._publish(loop, good)
        if broken is not None:
            self._publish(loop, broken)
        if published.already_published:  # a re-run on the same state: nothing merged, so ask as CI would
            from lakeloop.secrets import WEBHOOK_PATH, VaultClient
            from lakeloop.serving import vault_settings

            console.print("  the batch was published by an earlier run: asking for a retrain through "
                          "POST /hooks/retrain instead")
            approle = self.state_dir / "vault" / "webhook.approle.json"  # a CI caller holds the webhook's token
            token = VaultClient(vault_settings(self.services["vault"].url, approle_file=str(approle))).read_key(
                WEBHOOK_PATH, "token")
            since = loop.utcnow()
            loop.request_retrain(self.services["webhook"].url, token, self.project.name,
                                 "make run on data published earlier")

        step(2, "retrain, started by the data.published trigger (train → compress → register → deploy)")
        first = self._retrain(loop, since, detailed=True)

        key = loop.serving_key(self.data)
        step(3, f"traffic: {self.described.get(None, 'rows like the training data')} through {self.serving}/v2")
        normal_since = loop.utcnow()
        self._traffic(loop, key, self.seed + 1000, None, "normal traffic", first.result.version)
        step(4, "monitor-drift over the normal traffic")
        self._drift(loop, normal_since)

        step(5, f"traffic that has moved ({self.described.get('traffic', 'drifted')})")
        drift_since = loop.utcnow()
        self._traffic(loop, key, self.seed + 2000, "traffic", "drifted traffic", first.result.version)
        step(6, "monitor-drift over the drifted traffic: a second window confirms it (hysteresis)")
        outcome = self._drift(loop, drift_since)
        while outcome.status == "drift (unconfirmed)":
            outcome = self._drift(loop, drift_since)
        if not outcome.event_emitted:
            raise LakeloopError(f"monitor-drift did not emit lakeloop.drift.detected: {outcome.status} — "
                                f"{outcome.reason}")
        since = loop.utcnow()
        step(7, "retrain, started by the drift.detected trigger")
        self._retrain(loop, since)

        step(8, "ingest-data: a new labelled batch from the moved distribution; its merge fires the lakeFS webhook")
        source = self.state_dir / "samples" / f"{self.project.name}-seed{self.seed + 3000}-moved.parquet"
        loop.sample(self.project, self.rows, self.seed + 3000, "labelled").to_parquet(source)
        since = loop.utcnow()
        batch = self._publish(loop, source)
        if batch.already_published:
            console.print("  already published by an earlier run: no merge, so no webhook; done")
            return self.summary
        step(9, "monitor-drift meanwhile: the production model on the labelled rows it has never seen")
        self._drift(loop, drift_since)
        step(10, "retrain, started by the lakeFS post-merge webhook (receiver → lakeloop.data.published)")
        self._retrain(loop, since)
        return self.summary

    # -- steps ------------------------------------------------------------------------------------
    def _step(self, number: int, title: str) -> None:
        out.print(f"\n[bold cyan]{number}.[/] [bold]{title}[/]", highlight=False)

    def _publish(self, loop, source: Path):
        outcome = loop.publish(source, self.project)
        colour = {"published": "green", "quarantined": "yellow", "failed": "red"}[outcome.status]
        shown = "published (earlier run)" if outcome.already_published else outcome.status
        rows = "" if outcome.already_published else f" ({outcome.rows} rows)"
        out.print(f"  {source.name}: [{colour}]{shown}[/] → {outcome.location}{rows}", highlight=False)
        for problem in outcome.problems:
            out.print(f"    - {problem}", highlight=False)
        if outcome.status == "failed":
            raise LakeloopError(f"ingest-data failed on {source.name}: {outcome.detail}")
        result = shown + rows + (f" ({len(outcome.problems)} problems)" if outcome.problems else "")
        self.summary.add_row(f"ingest {source.name}", "make run", outcome.commit_id[:12] or outcome.location, "", "",
                             "", result)
        return outcome

    def _retrain(self, loop, since, detailed: bool = False):
        run = loop.wait_for_triggered_run(since, self.ui, lambda m: console.print(f"  {m}", highlight=False),
                                          self.seen, deployment=f"retrain/{self.project.name}")
        r = run.result
        metrics = r.training.test_metrics if r.training else {}
        out.print(f"  {run.name}: trained on {self.data.repository}@{r.data_commit[:12]}"
                  + (f", test {self.metric} {metrics[self.metric]:.4f}" if metrics else "")
                  + f"; chose {r.chosen}" + (" (same weights and config as before: measurement reused)"
                                             if r.compression and r.compression.reused else "")
                  + f"; registered v{r.version}", highlight=False)
        if detailed and r.compression is not None:
            out.print(_compression_table(r.compression))
        d = r.deploy
        colour = {"deployed": "green", "rejected": "yellow", "unchanged": "green"}[d.status]
        gate = d.gate.explanation if d.gate else d.detail
        out.print(f"  deploy-model: v{d.version} [{colour}]{d.status}[/] — {gate}", highlight=False)
        if d.status == "deployed":
            out.print(f"  {d.detail}; smoke test through the V2 endpoint on {d.smoke_rows} rows passed",
                      highlight=False)
        out.print(f"  running {run.latency_s:.1f} s after the automation created it, ran {run.duration_s:.0f} s: "
                  f"{run.url}",
                  highlight=False)
        score = ""
        if d.gate is not None:
            score = f"{d.gate.challenger_score:.4f}" + (f" (v{d.gate.champion} {d.gate.champion_score:.4f})"
                                                       if d.gate.champion_score is not None else "")
        self.summary.add_row(f"retrain {run.name}", run.trigger, r.data_commit[:12], f"v{r.version} {r.chosen}",
                             score, "", f"{d.status}; created → running {run.latency_s:.1f} s, "
                                        f"ran {run.duration_s:.0f} s")
        return run

    def _traffic(self, loop, key: str, seed: int, drift, label: str, version: int) -> None:
        figures = loop.send_traffic(self.serving, key, self.project, seed, drift)
        table = Table("rows/request", "requests", "p50 ms", "p99 ms", "requests/s", "answers",
                      title=f"{label}: {self.project.name} v{figures[0]['version']} (a sequential Python client)")
        for f in figures:
            table.add_row(str(f["batch"]), str(f["requests"]), f"{f['p50_ms']:.2f}", f"{f['p99_ms']:.2f}",
                          f"{f['requests_per_s']:.0f}", f["answers"])
        out.print(table)
        single = figures[0]
        self.summary.add_row(label, "make run", "", f"v{figures[0]['version']}", "", "",
                             f"{sum(f['requests'] * f['batch'] for f in figures)} rows in "
                             f"{sum(f['requests'] for f in figures)} requests, logged; 1 row: p50 "
                             f"{single['p50_ms']:.2f} ms, p99 {single['p99_ms']:.2f} ms")

    def _drift(self, loop, since):
        outcome = loop.check_drift(since, self.state_dir, self.project)
        perf = outcome.performance
        top = sorted(((outcome.scores.get(f, 0.0), f) for f in outcome.drifted), reverse=True)[:3]
        scores = ", ".join(f"{f} {s:.2f}" for s, f in top) or "none"
        colour = "red" if outcome.status == "drift" else "yellow" if outcome.status.startswith("drift") else "green"
        out.print(f"  monitor-drift on {outcome.rows} rows of v{outcome.version}: [{colour}]{outcome.status}[/] — "
                  f"{outcome.reason}; drifted: {scores}" + ("; emitted lakeloop.drift.detected" if outcome.event_emitted
                                                            else ""), highlight=False)
        performance = "" if perf is None else (f"; {perf.metric} {perf.current:.4f} on {perf.rows} new labelled rows "
                                               f"({perf.at_training:.4f} at training)")
        self.summary.add_row("monitor-drift", "make run (cron: hourly)", "", f"v{outcome.version}", "",
                             f"{len(outcome.drifted)}/{len(outcome.scores)}: {scores}",
                             outcome.status + (" → lakeloop.drift.detected" if outcome.event_emitted else "")
                             + performance)
        return outcome


def _compression_table(report) -> Table:
    table = Table("", "candidate", report.primary_metric, "drop", "KiB", "ms @1", "ms @64", "parity", "gate",
                  title=f"compress-model (uncompressed {report.primary_metric} {report.baseline:.4f}, "
                        f"tolerance {report.tolerance:.2f})")
    table.columns[1].no_wrap = True
    for row in report.table:
        parity = "-" if row["parity_max_abs"] is None else f"{row['parity_max_abs']:.0e}"
        table.add_row("[bold green]✔[/]" if row["name"] == report.chosen else "", row["name"],
                      f"{row['primary_metric']:.4f}", f"{row['drop']:+.4f}",
                      f"{row['size_bytes'] / 1024:.1f}", f"{row['latency_b1_ms']:.3f}",
                      f"{row['latency_b64_ms']:.3f}", parity,
                      "[green]passed[/]" if row["passed"] else f"[yellow]{row['reason']}[/]")
    return table
