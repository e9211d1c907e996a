"""What a deploy needs besides the registry: the champion/challenger gate and a client for the model server.

The gate scores both ONNX models — exactly the files the server will load — on the same test split
of the same data commit. The server client moves nothing itself: it asks the server to re-read its
alias now (`POST /v2/repository/models/{name}/load`), waits until every worker answers with the
expected version, and smoke-tests that version through the public V2 endpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pandas as pd

from lakeloop.errors import DeploymentError
from lakeloop.modeling.features import labels, split_of
from lakeloop.modeling.metrics import classification_metrics


def raw_inputs(session: ort.InferenceSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The rows of `frame` as the model's named inputs ([N, 1] each), read from the graph itself."""
    feeds = {}
    for node in session.get_inputs():
        column = frame[node.name]
        feeds[node.name] = (column.astype(str).to_numpy(dtype=object) if node.type == "tensor(string)"
                            else column.to_numpy(dtype=np.float32)).reshape(-1, 1)
    return feeds


def test_split(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[split_of(frame["transaction_id"]) == "test"].reset_index(drop=True)


def score(model: Path, frame: pd.DataFrame) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return session.run(["probability"], raw_inputs(session, frame))[0].astype(np.float64)


@dataclass
class GateDecision:
    metric: str
    challenger: float
    champion: float | None
    tolerance: float
    rows: int

    @property
    def passed(self) -> bool:
        return self.champion is None or self.challenger >= self.champion - self.tolerance

    def explain(self) -> str:
        if self.champion is None:
            return f"no champion: challenger {self.metric} {self.challenger:.4f} on {self.rows} test rows"
        if self.challenger > self.champion:
            verdict = "better"
        elif self.passed:
            verdict = f"within the tolerance of {self.tolerance:.4f}"
        else:
            verdict = f"worse by more than the tolerance of {self.tolerance:.4f}"
        return (f"challenger {self.metric} {self.challenger:.4f} vs champion {self.champion:.4f} on the same "
                f"{self.rows} test rows: {verdict}")


def gate(challenger: Path, champion: Path | None, test: pd.DataFrame, metric: str, tolerance: float) -> GateDecision:
    """Challenger must not be worse than the champion by more than `tolerance` on the same rows."""
    y = labels(test)
    mine = classification_metrics(y, score(challenger, test))[metric]
    theirs = classification_metrics(y, score(champion, test))[metric] if champion is not None else None
    return GateDecision(metric, mine, theirs, tolerance, len(test))


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

    def infer(self, frame: pd.DataFrame, inputs: list[dict], logged: bool = True) -> tuple[str, np.ndarray]:
        """Score `frame` through the V2 endpoint (JSON); returns (model_version, probabilities).

        `logged=False` keeps the rows out of the server's inference logs (smoke tests are not traffic).
        """
        body = {"inputs": [{"name": i["name"], "datatype": i["datatype"], "shape": [len(frame), 1],
                            "data": (frame[i["name"]].astype(str) if i["datatype"] == "BYTES"
                                     else frame[i["name"]]).tolist()} for i in inputs],
                "outputs": [{"name": "probability"}]}
        answer = self._call("POST", f"/v2/models/{self.model}/infer", json=body,
                            headers=None if logged else {"Lakeloop-Log": "skip"})
        if answer.status_code != 200:
            raise DeploymentError(f"smoke inference answered {answer.status_code}: {_error(answer)}")
        result = answer.json()
        return result["model_version"], np.asarray(result["outputs"][0]["data"], dtype=np.float64)

    def smoke(self, frame: pd.DataFrame, expected_version: str, expected: np.ndarray, atol: float = 1e-5) -> None:
        """The served answers must come from `expected_version` and match the local scores.

        Raises:
            DeploymentError: another version answered, or the outputs differ.
        """
        metadata = self._call("GET", f"/v2/models/{self.model}").json()
        version, served = self.infer(frame, metadata["inputs"], logged=False)
        if version != expected_version:
            raise DeploymentError(f"smoke test: v{version} answered, expected v{expected_version}")
        if served.shape != expected.shape or not np.allclose(served, expected, atol=atol):
            worst = float(np.max(np.abs(served - expected))) if served.shape == expected.shape else float("inf")
            raise DeploymentError(f"smoke test: the served v{version} disagrees with the registered model "
                                  f"(max abs difference {worst:.2e} > {atol:.0e})")

    def traffic(self, frame: pd.DataFrame, batch: int, requests: int) -> dict:
        """Send `requests` V2 requests of `batch` rows each, one after another; latency as the client sees it."""
        inputs = self._call("GET", f"/v2/models/{self.model}").json()["inputs"]
        latencies, flagged, version = [], 0, ""
        started = time.perf_counter()
        for i in range(requests):
            start = (i * batch) % max(len(frame) - batch, 1)
            rows = frame.iloc[start:start + batch]
            sent = time.perf_counter()
            version, scores = self.infer(rows, inputs)
            latencies.append(time.perf_counter() - sent)
            flagged += int(np.sum(scores >= 0.5))
        elapsed = time.perf_counter() - started
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        return {"batch": batch, "requests": requests, "version": version, "flagged": flagged,
                "p50_ms": float(p50), "p99_ms": float(p99),
                "requests_per_s": requests / elapsed, "rows_per_s": requests * batch / elapsed}

    def close(self) -> None:
        self._http.close()


def _error(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("error", answer.text))
    except ValueError:
        return answer.text[:200]
