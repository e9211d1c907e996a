"""Typed per-run options: pydantic models passed as flow parameters, so Prefect validates them and
the UI builds its run form from them. (Process settings are CLI options with `LAKELOOP_*` variables.)"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lakeloop.drift import DriftThresholds


def state_path(sub: str) -> str:
    """A folder under the stack's state directory (LAKELOOP_STATE_DIR, default .lakeloop): flow runs
    started by a worker keep their files next to the stack that started them."""
    return str(Path(os.environ.get("LAKELOOP_STATE_DIR") or ".lakeloop") / sub)


def serving_url() -> str:
    """The model server deploys switch: LAKELOOP_SERVING_URL (set by `lakeloop dev up`), else port 8080."""
    return os.environ.get("LAKELOOP_SERVING_URL") or "http://127.0.0.1:8080"


class DataConfig(BaseModel):
    """Where the versioned data lives and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field("lakeloop-data", description="lakeFS repository of the dataset.")
    branch: str = Field("main", description="Published branch: only validated data is merged here.")
    prefix: str = Field("data", description="Path prefix of the dataset's parquet parts.")
    storage_namespace: str | None = Field(
        None, description="Storage namespace used if the repository must be created "
                          "(default local://lakeloop/<repository>; e.g. s3://bucket/path on a real lakeFS).")
    lakefs_block: str = Field("lakeloop-lakefs", description="Name of the LakeFSConnection block to use.")

    def namespace(self) -> str:
        """The storage namespace to create the repository with."""
        return self.storage_namespace or f"local://lakeloop/{self.repository}"


class TrainingConfig(BaseModel):
    """How to train: model size, optimisation, and the hardware layout (CPU today, GPUs tomorrow)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, ge=1, le=1000, description="Most passes over the training split.")
    early_stopping_patience: int = Field(
        5, ge=0, description="Stop after this many epochs without a lower validation loss, and keep the epoch with "
                             "the lowest one as the model (0: run every epoch and keep the last).")
    global_batch_size: int = Field(512, ge=1, description="Batch size summed over all processes (at most an eighth "
                                                          "of the training rows, so small tables train too).")
    learning_rate: float = Field(1e-2, gt=0, description="AdamW learning rate (1e-2: within the quality targets on "
                                                         "every dataset of benchmarks/quality.py; 3e-3 missed one).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    pos_weight: float = Field(1.0, gt=0, description="Binary: loss weight of the positive class (e.g. 5 for a "
                                                     "rare class you would rather over-flag).")
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="Multiclass: 'balanced' weighs each class by the inverse of its training frequency.")
    regression_loss: Literal["mse", "huber"] = Field("mse", description="Regression: loss on the standardised label.")
    seed: int = Field(0, description="Seed: same data commit + same config + same seed → same metrics on CPU.")
    accelerator: Literal["auto", "cpu", "gpu"] = Field("auto", description="auto picks GPUs when present.")
    devices: int = Field(1, ge=1, description="Processes per node (one per GPU); `torchrun --nproc-per-node`.")
    nodes: int = Field(1, ge=1, description="Number of nodes; `torchrun --nnodes`.")
    node_rank: int = Field(0, ge=0, description="This node's rank (multi-node runs).")
    rdzv_endpoint: str | None = Field(None, description="host:port of the rendezvous (multi-node); local if empty.")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="auto: DDP when more than one process, else one device; ddp: DDP even for one.")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = Field(
        "auto", description="auto: bf16-mixed on GPUs, 32-true on CPUs.")
    work_root: str = Field(default_factory=lambda: state_path("training"),
                           description="Where runs keep data, checkpoints and results.")

    def run_key(self, commit_id: str, model: dict | None = None) -> str:
        """Identifies a run: the data commit plus everything that changes the result (not the layout): this
        config, and the project's features, label and model (`model`)."""
        relevant = self.model_dump(exclude={"devices", "nodes", "node_rank", "rdzv_endpoint", "work_root",
                                            "accelerator", "precision", "strategy"})
        relevant["project"] = model or {}
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]
        return f"{commit_id[:16]}-{digest}"


class CompressionConfig(BaseModel):
    """Which compressed candidates to build and how to choose among them."""

    model_config = ConfigDict(extra="forbid")

    tolerance: float = Field(0.01, ge=0, description="How much worse than the uncompressed model a candidate's "
                                                     "primary metric (the project's) may be (0.01 = 1 point).")
    candidates: list[Literal["int8-dynamic", "int8-static-qdq", "pruned", "distilled"]] = Field(
        ["int8-dynamic", "int8-static-qdq", "pruned", "distilled"], description="Candidates besides FP32.")
    prune_keep_fraction: float = Field(0.5, gt=0, le=1, description="Share of hidden units pruning keeps.")
    fine_tune_epochs: int = Field(2, ge=0, description="Epochs of fine-tuning after pruning.")
    student_hidden: list[int] = Field([32, 16], min_length=1, description="Hidden widths of the distilled student.")
    distill_epochs: int = Field(4, ge=1, description="Epochs of distillation.")
    calibration_rows: int = Field(2048, ge=64, description="Training rows used to calibrate static quantization.")
    latency_repeat: int = Field(200, ge=10, description="Timed runs per latency measurement.")


class RegistryConfig(BaseModel):
    """Where model versions live."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field("lakeloop-models", description="lakeFS repository of the model registry.")
    model_name: str = Field("", description="Registered model name (default: the project's name).")
    storage_namespace: str | None = Field(None, description="Used if the repository must be created.")
    lakefs_block: str = Field("lakeloop-lakefs", description="LakeFSConnection block (its Vault signs manifests).")

    def named(self, project: str) -> RegistryConfig:
        """This registry with the project's name as the model name, unless one is set."""
        return self if self.model_name else self.model_copy(update={"model_name": project})


class DeployConfig(BaseModel):
    """How a registered version goes live: the gate against the champion, the server to switch, the smoke test."""

    model_config = ConfigDict(extra="forbid")

    alias: Literal["production", "staging"] = Field("production", description="The alias the server follows.")
    tolerance: float = Field(0.01, ge=0, description="How much worse than the champion the challenger may be on "
                                                     "the project's primary metric (same test split).")
    server_url: str = Field(default_factory=serving_url, description="The `lakeloop serve` that follows the alias "
                            "(default: LAKELOOP_SERVING_URL, else http://127.0.0.1:8080).")
    swap_timeout: float = Field(60, gt=0, description="Seconds the server may take to serve the new version.")
    smoke_rows: int = Field(256, ge=1, description="Test rows sent through the V2 endpoint after the swap.")
    work_root: str = Field(default_factory=lambda: state_path("deploy"),
                           description="Where verified copies of both models are kept.")


class DriftConfig(BaseModel):
    """How monitor-drift watches the served model's traffic."""

    model_config = ConfigDict(extra="forbid")

    window_hours: float = Field(24, gt=0, description="Length of the traffic window that is compared.")
    min_rows: int = Field(100, ge=1, description="A window with fewer logged rows counts as no data.")
    thresholds: DriftThresholds = Field(default_factory=DriftThresholds, description="When features drift.")
    score_is_key: bool = Field(True, description="The model's answer (probability, predicted class or prediction) "
                                                 "is a key feature: when it moves, the window drifts.")
    performance_drop: float = Field(
        0.05, ge=0, description="Labelled rows published since the model's data commit: the window drifts when the "
                                "model's primary metric on them is this much below its test score.")
    confirm_windows: int = Field(2, ge=1, description="Consecutive drifted windows needed before acting.")
    cooldown_hours: float = Field(6, ge=0, description="After a drift event, no new one for this long.")
    reference_rows: int = Field(200_000, ge=1000, description="Most training rows the reference keeps.")
    logs_branch: str = Field("inference-logs", description="Branch of the data repository with the logs.")
    logs_prefix: str = Field("inference", description="Path prefix of the inference logs.")
    work_root: str = Field(default_factory=lambda: state_path("drift"), description="Where cached references live.")
