"""In-process inference: the chosen compressed ONNX model against torch eager FP32, same rows, per task.

For each project (the fraud example: binary; demand: regression; scikit-learn's digits: multiclass),
trains a model through the train-model path, builds and gates the candidates as compress-model
does, then times, on one thread each, interleaved round by round (so a slow spell of the machine
hits every contender alike), at batch 1 and 64:
- the baseline, torch eager FP32 doing the graph's work: the same raw inputs (`numbers` [N, K] with
  NaN, `categories` [N, C] strings), the missing-value fill, clip, log1p, scaling and indicators as
  tensor ops, category codes by dict lookup, the net, and the task's outputs — what a torch model
  server runs per request;
- the floor, torch eager FP32 running the net alone on already-encoded tensors (it skips all the
  preprocessing the ONNX graph does, so a ratio above 1 against it is a conservative figure);
- ONNX Runtime on the chosen variant, fed the raw inputs, every output computed;
and prints the ratios (targets: >= 3x the baseline at batch 1, >= 2x at batch 64) and the primary metric
of both.

Usage: python benchmarks/inference.py [--projects fraud,demand,digits] [--rows 60000] [--epochs 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._datasets import dataset  # noqa: E402
from lakeloop.compression import compress, onnx_inputs  # noqa: E402
from lakeloop.compression.candidates import session  # noqa: E402
from lakeloop.compression.export import _scaling  # noqa: E402
from lakeloop.config import CompressionConfig  # noqa: E402
from lakeloop.modeling.features import MISSING, UNKNOWN, FeatureSpec, split_of  # noqa: E402
from lakeloop.modeling.nets import build_net  # noqa: E402
from lakeloop.modeling.run import launch, prepare_run  # noqa: E402


def side_by_side(fns: dict, repeat: int, rounds: int = 20) -> dict[str, float]:
    """Median microseconds per call of each function, timed in interleaved rounds."""
    per = max(repeat // rounds, 5)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(20):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(per):
                fn()
            samples[name].append((time.perf_counter() - start) / per)
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


class TorchEager(torch.nn.Module):
    """The exported graph's work in torch eager: raw `numbers` (NaN = missing) and category codes in, the
    task's outputs out (as `lakeloop.compression.export` builds it, step for step)."""

    def __init__(self, spec: FeatureSpec, net: torch.nn.Module) -> None:
        super().__init__()
        numbers = spec.numbers
        self.spec, self.net = spec, net
        self.fill = torch.tensor([n.fill for n in numbers], dtype=torch.float32)
        big = float(torch.finfo(torch.float32).max)
        self.low = torch.tensor([n.clip[0] if n.clip else -big for n in numbers], dtype=torch.float32)
        self.high = torch.tensor([n.clip[1] if n.clip else big for n in numbers], dtype=torch.float32)
        self.log_mask = torch.tensor([n.log1p for n in numbers], dtype=torch.bool)
        self.flagged = torch.tensor([i for i, n in enumerate(numbers) if n.indicator], dtype=torch.int64)
        order, position = [], len(numbers)
        for i, n in enumerate(numbers):
            order.append(i)
            if n.indicator:
                order.append(position)
                position += 1
        self.order = torch.tensor(order, dtype=torch.int64)
        self.mean, self.std = (torch.tensor(v) for v in _scaling(spec))  # the graph's own scaling vectors
        self.codes = [{v: i + 2 for i, v in enumerate(c.vocabulary)} | {"": MISSING} for c in spec.categories]

    def forward(self, numbers: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nan = torch.isnan(numbers)
        x = torch.minimum(torch.maximum(numbers, self.low), self.high)
        x = torch.where(self.log_mask, torch.log1p(torch.clamp(x, min=0)), x)
        x = torch.where(nan, self.fill, x)
        if len(self.flagged):
            x = torch.cat([x, nan[:, self.flagged].float()], dim=1)[:, self.order]
        raw = self.net((x - self.mean) / self.std, codes)
        task = self.spec.label.task
        if task == "binary":
            probability = torch.sigmoid(raw)
            return probability, (probability >= 0.5).long()
        if task == "multiclass":
            return torch.softmax(raw, dim=1), raw.argmax(dim=1, keepdim=True)
        value = raw * self.spec.label.std + self.spec.label.mean
        return (torch.expm1(value) if self.spec.label.transform == "log1p" else value,)

    def run(self, feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
        strings = feeds.get("categories")
        rows = len(next(iter(feeds.values())))
        codes = torch.tensor([[table.get(v, UNKNOWN) for table, v in zip(self.codes, row, strict=True)]
                              for row in strings] if strings is not None else [[]] * rows, dtype=torch.int64)
        numbers = torch.from_numpy(feeds["numbers"]) if "numbers" in feeds else torch.zeros(rows, 0)
        with torch.inference_mode():
            return self(numbers, codes.reshape(rows, len(self.codes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projects", default="fraud,demand,digits")
    parser.add_argument("--rows", type=int, default=60_000, help="Rows generated for the example projects.")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.projects.split(","):
        with tempfile.TemporaryDirectory(prefix="lakeloop-infer-bench-") as tmp:
            project, frame = dataset(name, Path(tmp) / "project", args.rows)
            measure(project, frame, args, Path(tmp))


def measure(project, frame, args, tmp: Path) -> None:
    config = project.training.model_copy(update={"epochs": args.epochs, "work_root": str(tmp / "runs")})
    workdir = prepare_run(project, frame, "d" * 64, config, {})
    launch(workdir, config)
    report = compress(workdir, frame, CompressionConfig())
    spec = FeatureSpec.from_json((workdir / "features.json").read_text())
    net = build_net(spec, project.model, project)
    net.load_state_dict(torch.load(workdir / "model.pt"))
    net.eval()
    test = frame[split_of(frame, project.id) == "test"].reset_index(drop=True)
    sess = session(Path(report.chosen_path), threads=1)
    chosen = next(r for r in report.table if r["name"] == report.chosen)
    print(f"{project.name} ({project.task}, {len(frame)} rows): chosen variant {report.chosen} "
          f"({report.primary_metric} {chosen['primary_metric']:.4f} vs torch {report.baseline:.4f}, drop "
          f"{chosen['drop']:+.4f}; the gate allows {report.tolerance:.2f})")
    eager = TorchEager(spec, net).eval()
    for batch in (1, 64):
        rows = test.head(batch)
        numeric, categorical = (torch.from_numpy(a) for a in spec.encode(rows))
        feeds = onnx_inputs(rows, spec)
        with torch.inference_mode():  # the baseline does the same work as the Python pipeline, really
            expected = spec.outputs_of(net(numeric, categorical).numpy())
        assert np.allclose(eager.run(feeds)[0].numpy().reshape(expected.shape), expected, rtol=1e-4, atol=1e-5)

        def net_only(n=numeric, c=categorical):
            with torch.inference_mode():
                return net(n, c)

        times = side_by_side({"eager": lambda f=feeds: eager.run(f), "net": net_only,
                              "ort": lambda f=feeds: sess.run(None, f)},  # every output a client gets
                             args.repeat if batch == 1 else args.repeat // 4)
        target = 3.0 if batch == 1 else 2.0
        print(f"  batch {batch:>2}: torch eager, same work {times['eager']:7.1f} us (baseline) | net alone "
              f"{times['net']:7.1f} us (floor) | ORT {report.chosen} {times['ort']:6.1f} us = "
              f"{times['eager'] / times['ort']:.2f}x the baseline (target {target:.0f}x), "
              f"{times['net'] / times['ort']:.2f}x the floor", flush=True)


if __name__ == "__main__":
    main()
