"""Preparing a training run's folder and launching it with torchrun (plain Python, no Prefect)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from lakeloop.config import TrainingConfig
from lakeloop.devstack import _proc
from lakeloop.errors import TrainingError
from lakeloop.modeling.features import FeatureSpec, split_of
from lakeloop.modeling.nets import build_net
from lakeloop.project import Project, project_documents

log = logging.getLogger("lakeloop.training")


def prepare_run(project: Project, frame: pd.DataFrame, commit_id: str, config: TrainingConfig, lineage: dict,
                nullable: frozenset[str] = frozenset()) -> Path:
    """Write the run folder: encoded splits, the fitted feature spec, the project, the config, the lineage.

    The folder is named by the data commit, the config (not the hardware layout) and what of the project
    changes a model, so a re-run of the same training finds its checkpoints and resumes.
    """
    workdir = Path(config.work_root) / config.run_key(commit_id, project.fingerprint())
    with run_lock(workdir):
        if (workdir / "arrays.npz").exists():
            (workdir / "config.json").write_text(config.model_dump_json(indent=2))  # the layout may change
            return workdir
        return _prepare(project, frame, commit_id, config, lineage, nullable, workdir)


@contextmanager
def run_lock(workdir: Path) -> Iterator[None]:
    """One writer at a time per run folder, across threads and processes (an advisory `flock`, released
    when its holder exits, even by SIGKILL). A triggered retrain and a manual train-model of the same commit
    and config share the folder: the second waits, then resumes from the first's checkpoints."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another run is using %s: waiting for it to finish", workdir)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(project: Project, frame: pd.DataFrame, commit_id: str, config: TrainingConfig, lineage: dict,
             nullable: frozenset[str], workdir: Path) -> Path:
    split = split_of(frame, project.id)
    train = frame[split == "train"]
    if train.empty or not (split == "test").any() or not (split == "val").any():
        raise TrainingError(f"data commit {commit_id[:12]} has {len(frame)} rows: too few to split into "
                            "train/val/test; ingest more data first", commit_id=commit_id)
    spec = FeatureSpec.fit(project, train, nullable)
    build_net(spec, project.model, project)  # a broken plug-in fails here, before any process starts
    arrays: dict[str, np.ndarray] = {}
    for name in ("train", "val", "test"):
        part = frame[split == name]
        arrays[f"{name}_numeric"], arrays[f"{name}_categorical"] = spec.encode(part)
        arrays[f"{name}_label"] = spec.labels(part)
        arrays[f"{name}_target"] = spec.targets(part)
    if project.task == "multiclass" and config.class_weights == "balanced":
        counts = np.bincount(arrays["train_label"], minlength=len(spec.label.classes)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
        spec = replace(spec, extra={**spec.extra, "class_weights": weights.tolist()})
    tmp = workdir / "arrays.tmp.npz"
    np.savez(tmp, **arrays)
    (workdir / "features.json").write_text(spec.to_json())
    (workdir / "project.json").write_text(project.to_json())
    documents = workdir / "project"  # the project file and schema source as trained: the registry keeps them
    documents.mkdir(exist_ok=True)
    for document in project_documents(project).values():
        (documents / document["name"]).write_text(document["text"])
    (workdir / "config.json").write_text(config.model_dump_json(indent=2))
    (workdir / "lineage.json").write_text(json.dumps({**lineage, "data_commit": commit_id, "project": project.name,
                                                      "task": project.task,
                                                      "rows": {k: int(np.sum(split == k)) for k in
                                                               ("train", "val", "test")}}, indent=2))
    os.replace(tmp, workdir / "arrays.npz")  # last: its presence marks a complete folder
    return workdir


def torchrun_command(workdir: Path, config: TrainingConfig) -> list[str]:
    endpoint = config.rdzv_endpoint or f"127.0.0.1:{_proc.free_port()}"
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={config.devices}",
            f"--nnodes={config.nodes}", f"--node-rank={config.node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={endpoint}", "-m", "lakeloop.modeling.train", "--workdir", str(workdir)]


def launch(workdir: Path, config: TrainingConfig, timeout: float | None = None) -> dict:
    """Run training under torchrun in a subprocess and read its result file.

    Lightning's own DDP launcher re-executes the calling script, which breaks inside an orchestrator
    task; a dedicated entrypoint under torchrun does not (Lightning sees TorchElastic and stays put).
    Holds the folder's lock throughout: a second launch of the same folder waits, then resumes from the
    finished checkpoints (and reports the same result).
    """
    with run_lock(workdir):
        return _launch(workdir, config, timeout)


def _launch(workdir: Path, config: TrainingConfig, timeout: float | None) -> dict:
    (workdir / "config.json").write_text(config.model_dump_json(indent=2))
    (workdir / "result.json").unlink(missing_ok=True)
    threads = max(1, (os.cpu_count() or 1) // config.devices)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": str(config.seed)}
    log_path = workdir / "train.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(torchrun_command(workdir, config), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            returncode = process.wait(timeout=timeout)
        except BaseException as exc:  # a timeout, or the task itself being stopped
            _proc.stop(process.pid)  # torchrun starts its ranks in sessions of their own: they go too
            process.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise TrainingError(f"training in {workdir} ran past {timeout:.0f}s; its checkpoints are kept and "
                                    "a re-run resumes from the last one", workdir=str(workdir)) from exc
            raise
    if returncode != 0 or not (workdir / "result.json").exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
        raise TrainingError(f"training in {workdir} failed (exit {returncode}); a re-run resumes from the "
                            f"last checkpoint. Last lines of {log_path}:\n{tail}", workdir=str(workdir))
    return json.loads((workdir / "result.json").read_text())


def record_lineage(workdir: Path, **sections: object) -> dict:
    """Add sections (metrics, compression table, ...) to the run's lineage.json; returns the whole record.

    Under the folder's lock: two runs sharing the folder (a triggered retrain and a manual one) each add
    their sections to the other's instead of replacing them, and never rename one temporary file twice."""
    path = workdir / "lineage.json"
    with run_lock(workdir):
        lineage = json.loads(path.read_text()) if path.exists() else {}
        lineage.update(sections)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(lineage, indent=2, default=str))
        os.replace(tmp, path)
    return lineage
