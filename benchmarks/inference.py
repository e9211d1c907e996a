"""In-process inference: the chosen compressed ONNX model against torch eager FP32, same rows, per task.

For each project (the fraud example: binary; demand: regression; scikit-learn's digits: multiclass),
trains a model through the train-model path, builds and gates the candidates as compress-model
does, then times, on one thread each:
- torch eager FP32, the net alone on already-encoded tensors (the conservative baseline: it skips
  the feature preprocessing the ONNX graph does itself);
- torch eager FP32 with the Python preprocessing of raw rows (what serving a torch model needs);
- ONNX Runtime on the chosen variant, fed the raw columns;
at batch 1 and 64, and prints ratios and the primary metric of both.

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

import torch  # noqa: E402

from benchmarks._datasets import dataset  # noqa: E402
from lakeloop.compression import compress, onnx_inputs  # noqa: E402
from lakeloop.compression.candidates import session  # noqa: E402
from lakeloop.config import CompressionConfig  # noqa: E402
from lakeloop.modeling.features import FeatureSpec, split_of  # noqa: E402
from lakeloop.modeling.nets import build_net  # noqa: E402
from lakeloop.modeling.run import launch, prepare_run  # noqa: E402


def timed(fn, repeat: int) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6  # microseconds


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
    for batch in (1, 64):
        rows = test.head(batch)
        numeric, categorical = (torch.from_numpy(a) for a in spec.encode(rows))
        feeds = onnx_inputs(rows, spec)
        repeat = args.repeat if batch == 1 else args.repeat // 4

        def torch_net(n=numeric, c=categorical):
            with torch.inference_mode():
                return net(n, c)

        def torch_pipeline(r=rows):
            n, c = spec.encode(r)
            with torch.inference_mode():
                return net(torch.from_numpy(n), torch.from_numpy(c))

        t_net = timed(torch_net, repeat)
        t_pipe = timed(torch_pipeline, repeat // 4)
        t_ort = timed(lambda f=feeds: sess.run(None, f), repeat)  # every output a client gets
        print(f"  batch {batch:>2}: torch eager net {t_net:8.1f} us (baseline) | torch + preprocessing "
              f"{t_pipe:8.1f} us | ORT {report.chosen} {t_ort:7.1f} us = {t_net / t_ort:.2f}x faster than the "
              f"baseline, {t_pipe / t_ort:.1f}x than torch with preprocessing", flush=True)


if __name__ == "__main__":
    main()
