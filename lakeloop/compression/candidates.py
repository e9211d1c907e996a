"""Compressed candidates of a trained model, measured on this CPU and gated on accuracy.

Candidates: ONNX FP32 (graph-optimised by ORT), INT8 dynamic quantization, INT8 static QDQ
quantization (calibrated on training rows), structured pruning (physically smaller layers, then
fine-tuning) and knowledge distillation into a smaller student. Each is measured for the primary
metric on the test split, size, ORT latency at batch 1 and 64, and output parity with its torch net.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
import torch.nn.functional as F
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch.utils.data import DataLoader, TensorDataset

from lakeloop.compression.export import onnx_inputs, primary_output
from lakeloop.modeling.features import FeatureSpec
from lakeloop.modeling.metrics import task_metrics
from lakeloop.modeling.nets import TabularNet
from lakeloop.modeling.system import TabularSystem, task_loss

# max difference allowed between an export and its torch net, on the primary output (see `parity`)
PARITY_LIMIT = 1e-4
LATENCY_TIE = 0.05


@dataclass
class Measurement:
    """One candidate's row of the comparison table."""

    name: str
    path: str
    primary_metric: float
    metrics: dict
    size_bytes: int
    latency_b1_ms: float
    latency_b64_ms: float
    parity_max_abs: float | None  # vs the candidate's own torch net (None: no torch twin, e.g. INT8)
    drop: float = 0.0
    passed: bool = False
    reason: str = ""

    def as_row(self) -> dict:
        return asdict(self)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def latency_ms(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], repeat: int) -> float:
    outputs = [o.name for o in sess.get_outputs()]  # everything a client gets back
    for _ in range(10):
        sess.run(outputs, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(outputs, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _slice(feeds: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    return {k: v[:n] for k, v in feeds.items()}


def onnx_outputs(sess: ort.InferenceSession, feeds: dict[str, np.ndarray], task: str) -> np.ndarray:
    """The primary output as `FeatureSpec.outputs_of` gives it: [N] for one column, [N, C] for classes."""
    out = sess.run([primary_output(task)], feeds)[0].astype(np.float64)
    return out if task == "multiclass" else out[:, 0]


def parity(outputs: np.ndarray, expected: np.ndarray, task: str) -> float:
    """Largest difference: absolute for probabilities; for predictions, relative to their typical size (mean
    absolute value plus spread), since float32 rounding grows with the label's units."""
    diff = float(np.max(np.abs(outputs - expected))) if len(expected) else 0.0
    if task != "regression":
        return diff
    return diff / max(float(np.mean(np.abs(expected)) + np.std(expected)), 1e-12)


def measure(name: str, path: Path, test: pd.DataFrame, spec: FeatureSpec, targets: np.ndarray,
            torch_outputs: np.ndarray | None, metric: str, repeat: int = 200) -> Measurement:
    sess = session(path)
    feeds = onnx_inputs(test, spec)
    task = spec.label.task
    outputs = onnx_outputs(sess, feeds, task)
    metrics = task_metrics(task, targets, outputs)
    return Measurement(name=name, path=str(path), primary_metric=metrics[metric],
                       metrics={k: float(v) for k, v in metrics.items()}, size_bytes=path.stat().st_size,
                       latency_b1_ms=latency_ms(sess, _slice(feeds, 1), repeat),
                       latency_b64_ms=latency_ms(sess, _slice(feeds, 64), max(repeat // 4, 20)),
                       parity_max_abs=parity(outputs, torch_outputs, task) if torch_outputs is not None else None)


def torch_outputs(net: torch.nn.Module, spec: FeatureSpec, frame: pd.DataFrame) -> np.ndarray:
    """The torch pipeline's primary output: Python preprocessing, the net, the task's output function."""
    numeric, categorical = spec.encode(frame)
    with torch.no_grad():
        return spec.outputs_of(net.eval()(torch.from_numpy(numeric), torch.from_numpy(categorical)).numpy())


class _Calibration(CalibrationDataReader):
    """Raw training rows, in batches, for static quantization's activation ranges."""

    def __init__(self, frame: pd.DataFrame, spec: FeatureSpec, batch: int = 256) -> None:
        feeds = onnx_inputs(frame, spec)
        self._batches = iter([{k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, len(frame), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


# Only the net's matrix products are quantized, and not the first one that reads the numeric inputs:
# the built-in net's graph folds the standard scaling into that layer, so it sees raw values (amounts
# in thousands next to 0/1 flags), which one int8 scale per tensor cannot hold. The preprocessing and
# the embeddings stay exact too, so a quantized model sees the same features as the FP32 one.
QUANTIZED_OPS = ["Gemm", "MatMul"]


def _prepared(fp32: Path) -> tuple[Path, list[str]]:
    """ORT's recommended pre-processing (shape inference, optimisation) before quantizing, and the names
    of the matrix products that read the numeric matrix (kept in FP32)."""
    prepared = fp32.with_name(fp32.stem + ".prequant.onnx")
    if not prepared.exists():
        quant_pre_process(str(fp32), str(prepared))
    graph = onnx.load(str(prepared)).graph
    first = [n.name for n in graph.node if n.op_type in QUANTIZED_OPS and "numeric" in n.input]
    return prepared, first


def quantize_dynamic_int8(fp32: Path, out: Path) -> Path:
    prepared, first = _prepared(fp32)
    # dynamic quantization first rewrites each Gemm as a MatMul named NAME_MatMul (and an Add)
    quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
                     nodes_to_exclude=[*first, *(f"{name}_MatMul" for name in first)])
    return out


def quantize_static_qdq(fp32: Path, out: Path, calibration: pd.DataFrame, spec: FeatureSpec) -> Path:
    prepared, first = _prepared(fp32)
    quantize_static(str(prepared), str(out), _Calibration(calibration, spec), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=first)
    return out


def _linears(net: TabularNet) -> list[torch.nn.Linear]:
    return [m for m in net.mlp if isinstance(m, torch.nn.Linear)]


def prune_units(net: TabularNet, keep_fraction: float) -> TabularNet:
    """Structured pruning: keep each hidden layer's top units by the L1 norm of their incoming weights,
    and build physically smaller layers (sparsity that leaves the graph as big is not pruning)."""
    linears = _linears(net)
    hidden = tuple(max(1, round(layer.out_features * keep_fraction)) for layer in linears[:-1])
    small = TabularNet(net.numeric_features, [e.num_embeddings for e in net.embeddings], net.embedding_dim, hidden,
                       linears[-1].out_features)
    small.embeddings.load_state_dict(net.embeddings.state_dict())
    keep_prev = torch.arange(linears[0].in_features)
    for big, target in zip(linears, _linears(small), strict=True):
        if big is linears[-1]:
            keep = torch.arange(big.out_features)
        else:
            keep = torch.topk(big.weight.abs().sum(dim=1), target.out_features).indices.sort().values
        with torch.no_grad():
            target.weight.copy_(big.weight[keep][:, keep_prev])
            target.bias.copy_(big.bias[keep])
        keep_prev = keep
    return small


def _trainer(epochs: int, seed: int) -> L.Trainer:
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banners from in-process fits
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")  # Lightning 2.6 on torch 2.13
    L.seed_everything(seed, workers=True, verbose=False)
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, deterministic=True, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                     num_sanity_val_steps=0)


def _train_loader(arrays: dict[str, np.ndarray], extra: np.ndarray | None, batch: int, seed: int) -> DataLoader:
    tensors = [torch.from_numpy(arrays["train_numeric"]), torch.from_numpy(arrays["train_categorical"]),
               torch.from_numpy(arrays["train_label"])]
    if extra is not None:
        tensors.append(torch.from_numpy(extra))
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*tensors), batch_size=batch, shuffle=True, generator=generator)


def fine_tune(net: TabularNet, arrays: dict[str, np.ndarray], epochs: int, batch: int, seed: int,
              learning_rate: float, system_options: dict) -> TabularNet:
    system = TabularSystem(net, learning_rate=learning_rate, **system_options)
    val = DataLoader(TensorDataset(torch.from_numpy(arrays["val_numeric"]), torch.from_numpy(arrays["val_categorical"]),
                                   torch.from_numpy(arrays["val_label"])), batch_size=batch)
    _trainer(epochs, seed).fit(system, _train_loader(arrays, None, batch, seed), val)
    return net.eval()


class DistillationSystem(L.LightningModule):
    """Trains a student on the teacher's outputs and the true labels.

    Classification: the teacher's temperature-softened probabilities (soft targets); regression: the
    teacher's predictions. `alpha` weighs that against the task's own loss on the labels.

    Args:
        student: the smaller net.
        task: binary, multiclass or regression.
        temperature: softening of the teacher's logits (classification).
        alpha: weight of the teacher's targets (1 - alpha on the labels).
        learning_rate: AdamW learning rate.
        system_options: the task loss's options (pos_weight, class_weights, regression_loss).
    """

    def __init__(self, student: torch.nn.Module, task: str, temperature: float = 2.0, alpha: float = 0.7,
                 learning_rate: float = 3e-3, system_options: dict | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student"])
        self.student = student
        options = {k: v for k, v in (system_options or {}).items() if k != "task"}
        self.hard = task_loss(task, **options)

    def _soft(self, output: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t, task = self.hparams.temperature, self.hparams.task
        if task == "binary":
            return F.binary_cross_entropy_with_logits(output[:, 0] / t, torch.sigmoid(teacher[:, 0] / t)) * t * t
        if task == "multiclass":
            return F.kl_div(F.log_softmax(output / t, dim=1), F.softmax(teacher / t, dim=1),
                            reduction="batchmean") * t * t
        return F.mse_loss(output, teacher)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        numeric, categorical, y, teacher = batch
        output = self.student(numeric, categorical)
        alpha = self.hparams.alpha
        loss = alpha * self._soft(output, teacher) + (1 - alpha) * self.hard(output, y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.learning_rate)


def distill(teacher: TabularNet, spec: FeatureSpec, arrays: dict[str, np.ndarray], hidden: tuple[int, ...],
            epochs: int, batch: int, seed: int, system_options: dict) -> TabularNet:
    with torch.no_grad():
        soft = teacher.eval()(torch.from_numpy(arrays["train_numeric"]),
                              torch.from_numpy(arrays["train_categorical"])).numpy()
    student = TabularNet(spec.numeric_width, spec.cardinalities, teacher.embedding_dim, hidden, spec.label.outputs)
    _trainer(epochs, seed).fit(DistillationSystem(student, spec.label.task, system_options=system_options),
                               _train_loader(arrays, soft, batch, seed))
    return student.eval()


def gate(measurements: list[Measurement], baseline: float, tolerance: float, fp32_name: str,
         higher_is_better: bool = True) -> Measurement:
    """Mark each candidate passed or not; return the fastest that passed (batch 1, then batch 64), else FP32.

    A candidate passes when its primary metric is at most `tolerance` worse than the uncompressed torch
    model's (lower for a higher-is-better metric, higher for RMSE or log loss), its own export matches its
    torch net, and the FP32 export matches torch within 1e-4.
    """
    fp32 = next(m for m in measurements if m.name == fp32_name)
    fp32_ok = fp32.parity_max_abs is not None and fp32.parity_max_abs <= PARITY_LIMIT
    for m in measurements:
        m.drop = baseline - m.primary_metric if higher_is_better else m.primary_metric - baseline
        reasons = []
        if not fp32_ok:
            reasons.append(f"FP32 export differs from torch by {fp32.parity_max_abs:.2e} > {PARITY_LIMIT:.0e}")
        if m.drop > tolerance:
            reasons.append(f"metric drop {m.drop:.4f} > tolerance {tolerance:.4f}")
        if m.parity_max_abs is not None and m.parity_max_abs > PARITY_LIMIT:
            reasons.append(f"export differs from its torch net by {m.parity_max_abs:.2e}")
        m.passed, m.reason = not reasons, "; ".join(reasons) or "passed"
    passing = [m for m in measurements if m.passed]
    if not passing:
        return fp32
    # Latencies within 5% of the fastest are a tie (that is timer noise at tens of microseconds):
    # among those, the fastest at batch 64, then the smallest file.
    fastest = min(m.latency_b1_ms for m in passing)
    tied = [m for m in passing if m.latency_b1_ms <= fastest * (1 + LATENCY_TIE)]
    return min(tied, key=lambda m: (m.latency_b64_ms, m.size_bytes))
