"""The training entrypoint that `torchrun` starts: `python -m lakeloop.modeling.train --workdir DIR`.

Inputs and outputs are files in the run's folder, so the orchestrator never shares a process with
DDP workers: `config.json` (TrainingConfig), `features.json` (FeatureSpec), `arrays.npz` (encoded
splits) in; `checkpoints/` (one per epoch and `last.ckpt`), `model.pt` and `result.json` out. A run
whose folder already holds `checkpoints/last.ckpt` resumes from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from lakeloop.config import TrainingConfig
from lakeloop.modeling.features import FeatureSpec
from lakeloop.modeling.metrics import task_metrics
from lakeloop.modeling.nets import build_net
from lakeloop.modeling.system import LakeFSDataModule, TabularSystem
from lakeloop.project import Project


class History(Callback):
    """Per-epoch losses and training time, kept in the checkpoint so a resumed run has the whole curve."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self._started = 0.0
        self._train_seconds: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill_train_loss(trainer)
        self._started = time.perf_counter()
        self._train_seconds = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fill_train_loss(trainer)

    def _fill_train_loss(self, trainer: L.Trainer) -> None:
        """The system logs an epoch's train loss after the callbacks' epoch end: pick it up next."""
        if self.epochs and "train_loss" not in self.epochs[-1] and "train_loss" in trainer.callback_metrics:
            self.epochs[-1]["train_loss"] = float(trainer.callback_metrics["train_loss"])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started and self._train_seconds is None:
            self._train_seconds = time.perf_counter() - self._started

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.epochs.append({"epoch": trainer.current_epoch,
                            **({"val_loss": float(metrics["val_loss"])} if "val_loss" in metrics else {})})
        if self._train_seconds is not None:
            self.epochs[-1]["train_seconds"] = self._train_seconds

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.epochs:  # the epoch's wall time, validation included
            self.epochs[-1]["seconds"] = time.perf_counter() - self._started

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = list(state_dict["epochs"])


def _resume_point(checkpoints: Path) -> Path | None:
    """The newest checkpoint that loads: `last.ckpt`, else the latest `epoch=N.ckpt`.

    A process killed while writing a checkpoint leaves a truncated file; resuming from the
    previous complete one gives the same final result (training is deterministic).
    """
    if not checkpoints.exists():
        return None
    epochs = sorted(checkpoints.glob("epoch=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]), reverse=True)
    for candidate in [checkpoints / "last.ckpt", *epochs]:
        if not candidate.exists():
            continue
        try:
            torch.load(candidate, map_location="cpu", weights_only=False)
        except Exception as exc:  # a truncated or corrupt file: fall back to an older checkpoint
            print(f"skipping unreadable checkpoint {candidate.name}: {type(exc).__name__}", file=sys.stderr)
            continue
        return candidate
    return None


def _precision(config: TrainingConfig, on_gpu: bool) -> str:
    if config.precision != "auto":
        return config.precision
    return "bf16-mixed" if on_gpu else "32-true"


def train(workdir: Path) -> dict:
    config = TrainingConfig.model_validate_json((workdir / "config.json").read_text())
    spec = FeatureSpec.from_json((workdir / "features.json").read_text())
    project = Project.from_json((workdir / "project.json").read_text())
    L.seed_everything(config.seed, workers=True, verbose=False)
    on_gpu = config.accelerator == "gpu" or (config.accelerator == "auto" and torch.cuda.is_available())
    world = config.devices * config.nodes
    ddp = world > 1 or config.strategy == "ddp"
    strategy = DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo") if ddp else "auto"
    net = build_net(spec, project.model, project)
    system = TabularSystem(net, project.task, config.learning_rate, config.weight_decay, config.pos_weight,
                           spec.extra.get("class_weights"), config.regression_loss)
    data = LakeFSDataModule(str(workdir), config.global_batch_size, config.seed)
    checkpoints = workdir / "checkpoints"
    history = History()
    trainer = L.Trainer(
        accelerator="gpu" if on_gpu else "cpu", devices=config.devices, num_nodes=config.nodes, strategy=strategy,
        precision=_precision(config, on_gpu), max_epochs=config.epochs, deterministic=True,
        use_distributed_sampler=False, num_sanity_val_steps=0, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(workdir),
        callbacks=[ModelCheckpoint(dirpath=checkpoints, filename="epoch={epoch}", auto_insert_metric_name=False,
                                   save_top_k=-1, every_n_epochs=1, save_last=True),
                   ModelCheckpoint(dirpath=checkpoints, filename="best", monitor="val_loss", mode="min", save_top_k=1,
                                   enable_version_counter=False),
                   *([EarlyStopping("val_loss", patience=config.early_stopping_patience, mode="min")]
                     if config.early_stopping_patience else []), history])
    resume_from = _resume_point(checkpoints)
    resumed = resume_from is not None
    trainer.fit(system, data, ckpt_path=str(resume_from) if resumed else None)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Every rank leaves the process group together: a rank that exits while the group is alive
        # dies in gloo's teardown ("terminate called without an active exception", SIGABRT).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    best = checkpoints / "best.ckpt"
    if config.early_stopping_patience and best.exists():  # the epoch with the lowest validation loss is the model
        system.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    if trainer.global_rank != 0:
        return {}
    net.eval()
    arrays = np.load(workdir / "arrays.npz")
    with torch.no_grad():
        raw = net(torch.from_numpy(arrays["test_numeric"]).to(system.device),
                  torch.from_numpy(arrays["test_categorical"]).to(system.device)).float().cpu().numpy()
    metrics = task_metrics(project.task, arrays["test_target"], spec.outputs_of(raw))
    result = {"test_metrics": metrics, "task": project.task, "history": history.epochs,
              "resumed": resumed, "world_size": world, "precision": _precision(config, on_gpu),
              "accelerator": "gpu" if on_gpu else "cpu", "epochs": config.epochs,
              "epochs_run": trainer.current_epoch, "best_epoch": _best_epoch(history.epochs),
              "backend": ("nccl" if on_gpu else "gloo") if ddp else "none"}
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, workdir / "model.pt")
    (workdir / "result.json.tmp").write_text(json.dumps(result, indent=2))
    os.replace(workdir / "result.json.tmp", workdir / "result.json")
    return result


def _best_epoch(epochs: list[dict]) -> int | None:
    losses = [(e["val_loss"], e["epoch"]) for e in epochs if "val_loss" in e and "epoch" in e]
    return int(min(losses)[1]) if losses else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True)
    train(parser.parse_args(argv).workdir)


if __name__ == "__main__":
    main()
