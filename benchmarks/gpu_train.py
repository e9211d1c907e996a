"""GPU training benchmark: samples/s at bf16 on one GPU, and the nccl DDP path, through train-model's
own torchrun launcher.

Run it on a machine with CUDA:   python benchmarks/gpu_train.py
It reports, for bf16-mixed and for 32-true, the training samples/s of the best epoch, and then runs
DDP with the nccl backend over every visible GPU (with one GPU: a DDP process group of one, which
still initialises nccl and all-reduces every gradient). Without CUDA it says so and exits 0;
`--cpu-smoke` runs the same code path on the CPU (gloo, tiny sizes) so the script cannot rot.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._fraud import FRAUD, generate_transactions  # noqa: E402
from lakeloop.config import TrainingConfig  # noqa: E402
from lakeloop.data import pseudonymise  # noqa: E402
from lakeloop.modeling.run import launch, prepare_run  # noqa: E402


def run(project, frame, config: TrainingConfig, label: str) -> dict:
    workdir = prepare_run(project, frame, "9" * 64, config, {})
    result = launch(workdir, config)
    with np.load(workdir / "arrays.npz") as arrays:
        samples = (arrays["train_label"].shape[0] // config.global_batch_size) * config.global_batch_size
    best = min(h["train_seconds"] for h in result["history"][1:] or result["history"])
    auc = result["test_metrics"]["roc_auc"]
    print(f"{label:<44} {samples / best:>12,.0f} samples/s  (world {result['world_size']}, backend "
          f"{result['backend']}, precision {result['precision']}, test ROC AUC {auc:.3f})", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 1024, 512])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (gloo), for CI")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.rows, args.epochs, args.batch, args.hidden = 6_000, 2, 512, [32]
    elif not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (run this on a GPU machine, or --cpu-smoke)")
        return
    accelerator = "cpu" if args.cpu_smoke else "gpu"
    gpus = 1 if args.cpu_smoke else torch.cuda.device_count()
    if not args.cpu_smoke:
        print(f"{gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    frame = pseudonymise(generate_transactions(args.rows, seed=5), b"k" * 32, FRAUD.pii_columns)
    with tempfile.TemporaryDirectory(prefix="lakeloop-gpu-bench-") as tmp:
        project = FRAUD
        project = project.model_copy(update={"model": project.model.model_copy(update={"hidden": args.hidden})})
        base = TrainingConfig(epochs=args.epochs, global_batch_size=args.batch, accelerator=accelerator,
                              learning_rate=1e-3)
        precisions = ["32-true"] if args.cpu_smoke else ["bf16-mixed", "32-true"]
        for precision in precisions:
            run(project, frame, base.model_copy(update={"precision": precision, "work_root": f"{tmp}/{precision}"}),
                f"1 device, {precision}")
        ddp = base.model_copy(update={"devices": gpus, "strategy": "ddp", "work_root": f"{tmp}/ddp",
                                      "precision": "32-true" if args.cpu_smoke else "bf16-mixed"})
        run(project, frame, ddp, f"DDP over {gpus} device(s), {'gloo' if args.cpu_smoke else 'nccl'}")


if __name__ == "__main__":
    main()
