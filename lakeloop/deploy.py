"""What a deploy needs besides the registry: the champion/challenger gate and a client for the model server.

The gate scores both ONNX models — exactly the files the server will load — on the same test split
of the same data commit. The server client moves nothing itself: it asks the server to re-read its
alias now (`POST /v2/repository/models/{name}/load`), waits until every worker answers with the
expected version, and smoke-tests that version through the public V2 endpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd

from lakeloop.compression.export import primary_output
from lakeloop.errors import DeploymentError
from lakeloop.modeling.features import boolean_values, category_strings, split_of
from lakeloop.modeling.metrics import task_metrics
from lakeloop.packing import pack, packing_of


def raw_inputs(session: ort.InferenceSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows of `frame` as the model's graph inputs (see `raw_columns`), packed as the model declares."""
    return pack(raw_columns(session, frame), packing_of(session.get_modelmeta().custom_metadata_map))


def raw_columns(session: ort.InferenceSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows of `frame` as one [N, 1] array per column the model reads, as a V2 client sends them: read
    from the model itself (its inputs and the columns each packs), strings as canonical category strings
    ("" = missing), numbers and booleans as float32 (NaN = missing)."""
    packing = packing_of(session.get_modelmeta().custom_metadata_map)
    columns = {}
    for node in session.get_inputs():
        strings = node.type == "tensor(string)"
        for name in packing.get(node.name, [node.name]):
            column = frame[name]
            if strings:
                values = category_strings(column).to_numpy(dtype=object)
            elif pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
                values = boolean_values(column, name).astype(np.float32)
            else:
                values = column.to_numpy(dtype=np.float32)
            columns[name] = values.reshape(-1, 1)
    return columns


@dataclass(frozen=True)
class ModelInfo:
    """What a lakeloop ONNX model says about itself (its `lakeloop.*` metadata)."""

    task: str
    label: str
    classes: tuple[str, ...]

    @classmethod
    def of(cls, session: ort.InferenceSession) -> ModelInfo:
        meta = session.get_modelmeta().custom_metadata_map
        return cls(meta.get("lakeloop.task", "binary"), meta.get("lakeloop.label", ""),
                   tuple(json.loads(meta.get("lakeloop.classes", "[]"))))

    def targets(self, frame: pd.DataFrame) -> np.ndarray:
        """The label column as the primary output is scored against: class index, or the value."""
        if self.task == "regression":
            return frame[self.label].to_numpy(dtype=np.float64)
        index = pd.Index(self.classes).get_indexer(category_strings(frame[self.label]).to_numpy())
        return index.astype(np.int64)


class OnnxModel:
    """One lakeloop ONNX file, opened once: its session, what it says about itself, its answers."""

    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.info = ModelInfo.of(self.session)

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        """The primary output: [N] probability or prediction, [N, C] class probabilities."""
        task = self.info.task
        out = self.session.run([primary_output(task)], raw_inputs(self.session, frame))[0].astype(np.float64)
        return out if task == "multiclass" else out.reshape(-1)

    def predicted_labels(self, frame: pd.DataFrame) -> np.ndarray:
        """Classification: the predicted class names; regression: the predictions."""
        if self.info.task == "regression":
            return self.score(frame)
        index = self.session.run(["label"], raw_inputs(self.session, frame))[0].reshape(-1)
        return np.asarray(self.info.classes, dtype=object)[index]

    def metrics(self, frame: pd.DataFrame) -> dict[str, float]:
        """The task's metrics on labelled rows."""
        return task_metrics(self.info.task, self.info.targets(frame), self.score(frame))


def score(model: Path, frame: pd.DataFrame) -> np.ndarray:
    """The model's primary output on `frame` (see `OnnxModel.score`)."""
    return OnnxModel(model).score(frame)


def test_rows(frame: pd.DataFrame, id_column: str | None) -> pd.DataFrame:
    """The test split of `frame` (the rows no model of the project ever trains on)."""
    return frame[split_of(frame, id_column) == "test"].reset_index(drop=True)


@dataclass
class GateDecision:
    metric: str
    challenger: float
    champion: float | None
    tolerance: float
    rows: int
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        if self.champion is None:
            return True
        if self.higher_is_better:
            return self.challenger >= self.champion - self.tolerance
        return self.challenger <= self.champion + self.tolerance

    def explain(self) -> str:
        if self.champion is None:
            return f"no champion: challenger {self.metric} {self.challenger:.4f} on {self.rows} test rows"
        better = self.challenger > self.champion if self.higher_is_better else self.challenger < self.champion
        if better:
            verdict = "better"
        elif self.passed:
            verdict = f"within the tolerance of {self.tolerance:.4f}"
        else:
            verdict = f"worse by more than the tolerance of {self.tolerance:.4f}"
        direction = "higher" if self.higher_is_better else "lower"
        return (f"challenger {self.metric} {self.challenger:.4f} vs champion {self.champion:.4f} ({direction} is "
                f"better) on the same {self.rows} test rows: {verdict}")


def gate(challenger: Path, champion: Path | None, test: pd.DataFrame, metric: str, tolerance: float,
         higher_is_better: bool = True) -> GateDecision:
    """Challenger must not be worse than the champion by more than `tolerance` on the same rows."""
    mine = OnnxModel(challenger).metrics(test)[metric]
    theirs = OnnxModel(champion).metrics(test)[metric] if champion is not None else None
    return GateDecision(metric, mine, theirs, tolerance, len(test), higher_is_better)


class ServerClient:
    """Talks to a running `lakeloop serve` the way any V2 client does, plus its reload endpoint."""

    def __init__(self, url: str, model: str, api_key: str | None, timeout: float = 30) -> None:
        self.url, self.model = url.rstrip("/"), model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise DeploymentError(f"the model server at {self.url} did not answer {method} {path}: {exc}") from exc

    def serving_version(self) -> str | None:
        answer = self._call("GET", f"/v2/models/{self.model}")
        if answer.status_code == 503:
            return None
        if answer.status_code != 200:
            raise DeploymentError(f"GET {self.url}/v2/models/{self.model} answered {answer.status_code}: "
                                  f"{_error(answer)}")
        return answer.json()["versions"][0]

    def reload(self, expected: str | None, timeout: float = 60, confirmations: int = 5) -> None:
        """Ask the server to load its alias's version now; wait until it serves `expected`.

        With several workers, each picks the change up on its own poll: the version must be seen
        on `confirmations` requests in a row. With `expected` None the alias was removed: the
        server stops serving (and answers the load with 400, which is what is asked for).

        Raises:
            DeploymentError: the server refused the version (verification or smoke inference
                failed) or did not serve it within `timeout` seconds.
        """
        answer = self._call("POST", f"/v2/repository/models/{self.model}/load")
        if expected is None:
            return
        if answer.status_code != 200:
            raise DeploymentError(f"the model server refused {self.model} v{expected}: {_error(answer)}")
        deadline, seen = time.monotonic() + timeout, 0
        while seen < confirmations:
            version = self.serving_version()
            seen = seen + 1 if version == expected else 0
            if time.monotonic() > deadline:
                raise DeploymentError(f"the model server still serves {version!r}, not v{expected}, after "
                                      f"{timeout:.0f}s")
            if seen < confirmations:
                time.sleep(0.05 if version == expected else 0.25)

    def infer(self, frame: pd.DataFrame, inputs: list[dict], logged: bool = True,
              output: str = "probability") -> tuple[str, np.ndarray]:
        """Score `frame` through the V2 endpoint (JSON); returns (model_version, the output as numpy).

        Missing values go as JSON null. `logged=False` keeps the rows out of the server's inference logs
        (smoke tests are not traffic).
        """
        def data(column: pd.Series, datatype: str) -> list:
            if datatype == "BYTES":
                return category_strings(column).tolist()
            values = (boolean_values(column, str(column.name)) if pd.api.types.is_bool_dtype(column)
                      or not pd.api.types.is_numeric_dtype(column) else column.to_numpy(dtype=np.float64))
            return [None if np.isnan(v) else float(v) for v in values]

        body = {"inputs": [{"name": i["name"], "datatype": i["datatype"], "shape": [len(frame), 1],
                            "data": data(frame[i["name"]], i["datatype"])} for i in inputs],
                "outputs": [{"name": output}]}
        answer = self._call("POST", f"/v2/models/{self.model}/infer", json=body,
                            headers=None if logged else {"Lakeloop-Log": "skip"})
        if answer.status_code != 200:
            raise DeploymentError(f"smoke inference answered {answer.status_code}: {_error(answer)}")
        result = answer.json()
        out = result["outputs"][0]
        values = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        return result["model_version"], values[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values

    def smoke(self, frame: pd.DataFrame, expected_version: str, expected: np.ndarray, atol: float = 1e-5) -> None:
        """The served answers must come from `expected_version` and match the local scores.

        Raises:
            DeploymentError: another version answered, or the outputs differ.
        """
        metadata = self._call("GET", f"/v2/models/{self.model}").json()
        output = metadata["outputs"][0]["name"]  # the primary output comes first
        version, served = self.infer(frame, metadata["inputs"], logged=False, output=output)
        if version != expected_version:
            raise DeploymentError(f"smoke test: v{version} answered, expected v{expected_version}")
        if served.shape != expected.shape or not np.allclose(served, expected, atol=atol):
            worst = float(np.max(np.abs(served - expected))) if served.shape == expected.shape else float("inf")
            raise DeploymentError(f"smoke test: the served v{version} disagrees with the registered model "
                                  f"(max abs difference {worst:.2e} > {atol:.0e})")

    def traffic(self, frame: pd.DataFrame, batch: int, requests: int) -> dict:
        """Send `requests` V2 requests of `batch` rows each, one after another; latency as the client sees it.

        `answers` sums up what the model said: rows per predicted class, or the mean prediction.
        """
        metadata = self._call("GET", f"/v2/models/{self.model}").json()
        names = [o["name"] for o in metadata["outputs"]]
        output = "label" if "label" in names else names[0]
        latencies, answers, version = [], [], ""
        started = time.perf_counter()
        for i in range(requests):
            start = (i * batch) % max(len(frame) - batch, 1)
            rows = frame.iloc[start:start + batch]
            sent = time.perf_counter()
            version, values = self.infer(rows, metadata["inputs"], output=output)
            latencies.append(time.perf_counter() - sent)
            answers.append(values.reshape(-1))
        elapsed = time.perf_counter() - started
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        return {"batch": batch, "requests": requests, "version": version,
                "answers": _summary(np.concatenate(answers), output, metadata.get("parameters", {})),
                "p50_ms": float(p50), "p99_ms": float(p99),
                "requests_per_s": requests / elapsed, "rows_per_s": requests * batch / elapsed}

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _summary(values: np.ndarray, output: str, parameters: dict) -> str:
    """Rows per predicted class (most frequent first, class names from the model's metadata), or the mean."""
    if output != "label":
        return f"mean {output} {float(np.mean(values)):.4g}"
    classes = parameters.get("classes") or []
    index, counts = np.unique(values.astype(np.int64), return_counts=True)
    order = np.argsort(-counts)
    return ", ".join(f"{classes[i] if 0 <= i < len(classes) else i}: {c}" for i, c in
                     zip(index[order][:4].tolist(), counts[order][:4].tolist(), strict=True))


def _error(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("error", answer.text))
    except ValueError:
        return answer.text[:200]
