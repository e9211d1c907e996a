"""The training, inference and GPU benchmark scripts keep working (small sizes, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_training_benchmark():
    out = _run("benchmarks/training.py", "--rows", "20000", "--epochs", "2")
    assert "plain PyTorch loop" in out and "x the baseline" in out


def test_inference_benchmark():
    out = _run("benchmarks/inference.py", "--projects", "fraud,wine", "--rows", "12000", "--epochs", "2",
               "--repeat", "200")
    assert "fraud (binary" in out and "wine (multiclass" in out and out.count("chosen variant") == 2
    assert out.count("x the baseline (target") == 4 and out.count("x the floor") == 4


def test_gpu_benchmark_code_path_on_cpu():
    out = _run("benchmarks/gpu_train.py", "--cpu-smoke")
    assert "1 device, 32-true" in out and "backend gloo" in out
