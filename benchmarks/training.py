"""Training overhead: one epoch through the train-model path against a plain PyTorch loop.

Same rows, same net, same global batch, same optimiser and loss, same thread count. The
train-model path is Lightning under torchrun, as `train-model` runs it; its epoch time is read from
the run's own per-epoch timing (so process start-up, reported separately, is not in the ratio).

Usage: python benchmarks/training.py [--rows 300000] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from benchmarks._fraud import FRAUD, generate_transactions  # noqa: E402
from lakeloop.config import TrainingConfig  # noqa: E402
from lakeloop.data import pseudonymise  # noqa: E402
from lakeloop.modeling.features import FeatureSpec  # noqa: E402
from lakeloop.modeling.nets import build_net  # noqa: E402
from lakeloop.modeling.run import launch, prepare_run  # noqa: E402
from lakeloop.project import Project  # noqa: E402


def plain_epochs(workdir: Path, config: TrainingConfig, epochs: int, project: Project) -> list[float]:
    """The loop people write by hand: DataLoader, forward, BCE, backward, AdamW step."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    spec = FeatureSpec.from_json((workdir / "features.json").read_text())
    net = build_net(spec, project.model)
    with np.load(workdir / "arrays.npz") as a:
        data = TensorDataset(*(torch.from_numpy(a[f"train_{k}"]) for k in ("numeric", "categorical", "label")))
    loader = DataLoader(data, batch_size=config.global_batch_size, shuffle=True, drop_last=True)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(config.pos_weight))
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for numeric, categorical, y in loader:
            optimiser.zero_grad()
            loss = loss_fn(net(numeric, categorical)[:, 0], y)
            loss.backward()
            optimiser.step()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    frame = pseudonymise(generate_transactions(args.rows, seed=3), b"k" * 32, FRAUD.pii_columns)
    with tempfile.TemporaryDirectory(prefix="lakeloop-train-bench-") as tmp:
        project = FRAUD
        config = project.training.model_copy(update={"epochs": args.epochs, "work_root": tmp})
        workdir = prepare_run(project, frame, "b" * 64, config, {})
        os.environ["OMP_NUM_THREADS"] = str(os.cpu_count() or 1)
        start = time.perf_counter()
        result = launch(workdir, config)
        wall = time.perf_counter() - start
        lightning = [h["train_seconds"] for h in result["history"]][1:]  # the first epoch warms up
        plain = plain_epochs(workdir, config, args.epochs, project)[1:]
        with np.load(workdir / "arrays.npz") as arrays:
            rows = int(arrays["train_label"].shape[0])
    best_l, best_p = min(lightning), min(plain)
    print(f"train split {rows:,} rows, global batch {config.global_batch_size}, {args.epochs} epochs")
    print(f"plain PyTorch loop       {best_p:.3f} s/epoch (baseline)")
    print(f"train-model path         {best_l:.3f} s/epoch = {best_l / best_p:.2f}x the baseline (target <= 1.15)")
    print(f"whole torchrun launch    {wall:.1f} s for {args.epochs} epochs (process start-up, data load, "
          f"checkpoints, test metrics included)")


if __name__ == "__main__":
    main()
