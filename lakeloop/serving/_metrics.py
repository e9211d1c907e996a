"""Prometheus metrics for the model server, in the text exposition format (no client library needed).

Updates are plain integer/float additions on the event loop thread: cheap enough for every request.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

# seconds; tuned for a CPU model server answering in well under a millisecond to tens of ms
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str], int] = defaultdict(int)  # (model, code) -> count
        self.rows: dict[str, int] = defaultdict(int)
        self.bucket_counts = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.swaps: dict[tuple[str, str], int] = defaultdict(int)  # (model, outcome) -> count
        self.model_info: dict[str, dict[str, str]] = {}  # model -> {version, sha256}
        self.gauges: dict[str, float] = {}

    def observe(self, model: str, code: int, seconds: float, rows: int = 0) -> None:
        self.requests[(model, str(code))] += 1
        self.rows[model] += rows
        self.bucket_counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def render(self) -> str:
        lines = ["# HELP lakeloop_inference_requests_total Inference requests by model and HTTP status.",
                 "# TYPE lakeloop_inference_requests_total counter"]
        lines += [f'lakeloop_inference_requests_total{{model="{m}",code="{c}"}} {n}'
                  for (m, c), n in sorted(self.requests.items())]
        lines += ["# HELP lakeloop_inference_rows_total Rows scored.", "# TYPE lakeloop_inference_rows_total counter"]
        lines += [f'lakeloop_inference_rows_total{{model="{m}"}} {n}' for m, n in sorted(self.rows.items())]
        lines += ["# HELP lakeloop_inference_latency_seconds Time from request received to response ready.",
                  "# TYPE lakeloop_inference_latency_seconds histogram"]
        cumulative = 0
        for bound, count in zip((*BUCKETS, float("inf")), self.bucket_counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'lakeloop_inference_latency_seconds_bucket{{le="{le}"}} {cumulative}')
        lines += [f"lakeloop_inference_latency_seconds_sum {self.latency_sum}",
                  f"lakeloop_inference_latency_seconds_count {self.latency_count}",
                  "# HELP lakeloop_model_info The version each model serves (value 1).",
                  "# TYPE lakeloop_model_info gauge"]
        for model, info in sorted(self.model_info.items()):
            labels = ",".join(f'{k}="{v}"' for k, v in {"model": model, **info}.items())
            lines.append(f"lakeloop_model_info{{{labels}}} 1")
        lines += ["# HELP lakeloop_model_swaps_total Hot swaps by model and outcome (swapped, refused).",
                  "# TYPE lakeloop_model_swaps_total counter"]
        lines += [f'lakeloop_model_swaps_total{{model="{m}",outcome="{o}"}} {n}'
                  for (m, o), n in sorted(self.swaps.items())]
        for name, value in sorted(self.gauges.items()):
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"
