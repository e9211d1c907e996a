"""An ONNX model ready to serve: an ONNX Runtime session tuned for CPUs, its V2 inputs, a smoke check."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field

from lakeloop.errors import ServingError
from lakeloop.serving._protocol import NUMPY_OF, InputSpec

V2_OF_ONNX = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(string)": "BYTES",
              "tensor(double)": "FP64", "tensor(int32)": "INT32", "tensor(bool)": "BOOL"}
LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
          "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


class Tuning(BaseModel):
    """ONNX Runtime session options for CPU serving."""

    intra_op_threads: int = Field(1, ge=0, description="Threads inside one operator (0: ORT decides). One per "
                                  "worker process is fastest for small models: parallelism comes from workers.")
    inter_op_threads: int = Field(1, ge=0, description="Threads across independent operators (0: ORT decides).")
    graph_optimization: str = Field("all", pattern="^(disable|basic|extended|all)$",
                                    description="ORT graph optimisation level.")
    cache_dir: str | None = Field(None, description="Where the optimised graph is cached (keyed by model sha256); "
                                  "a later start or another worker loads it without optimising again.")


@dataclass
class LoadedModel:
    """One model version in memory. Immutable once built; a swap replaces the whole object."""

    name: str
    version: str
    path: Path
    session: ort.InferenceSession
    inputs: dict[str, InputSpec]
    outputs: list[str]
    sha256: str
    loaded_at: float = field(default_factory=time.time)

    def metadata(self) -> dict:
        """`GET /v2/models/{name}`."""
        return {"name": self.name, "versions": [self.version], "platform": "onnxruntime_onnx",
                "inputs": [{"name": s.name, "datatype": s.datatype, "shape": [-1, 1]} for s in self.inputs.values()],
                "outputs": [{"name": o.name, "datatype": V2_OF_ONNX.get(o.type, o.type),
                             "shape": [d if isinstance(d, int) else -1 for d in o.shape]}
                            for o in self.session.get_outputs()],
                "parameters": self.parameters()}

    def parameters(self) -> dict:
        """What a lakeloop model says about itself (task, label, class names in output order); {} for others."""
        meta = self.session.get_modelmeta().custom_metadata_map
        found = {key: meta[f"lakeloop.{key}"] for key in ("task", "label") if f"lakeloop.{key}" in meta}
        if "lakeloop.classes" in meta:
            found["classes"] = json.loads(meta["lakeloop.classes"])
        return found

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        names = outputs or self.outputs
        return dict(zip(names, self.session.run(names, feeds), strict=True))

    def smoke(self) -> None:
        """One inference on a neutral row (zeros, empty strings) must give finite outputs.

        Raises:
            ServingError: the model fails or answers NaN/inf: it must not serve.
        """
        feeds = {s.name: (np.array([[""]], dtype=object) if s.datatype == "BYTES"
                          else np.zeros((1, 1), dtype=NUMPY_OF[s.datatype])) for s in self.inputs.values()}
        try:
            result = self.run(feeds)
        except Exception as exc:  # ORT raises its own exception types
            raise ServingError(f"{self.name} v{self.version}: the smoke inference failed: {exc}") from exc
        for name, value in result.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ServingError(f"{self.name} v{self.version}: the smoke inference gave non-finite {name!r} "
                                   "(NaN or infinity): refusing to serve it")


def load(path: Path, name: str, version: str, tuning: Tuning | None = None) -> LoadedModel:
    """Open an ONNX file with tuned session options and check its inputs are V2-servable.

    Raises:
        ServingError: the file is missing or not a valid ONNX model, or it has an input ORT types
            this server cannot take from V2 (e.g. a sequence or map).
    """
    tuning = tuning or Tuning()
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ServingError(f"cannot read the model file {path}: {exc.strerror}") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = tuning.intra_op_threads
    options.inter_op_num_threads = tuning.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    model_path, cached, partial = path, None, None
    options.graph_optimization_level = LEVELS[tuning.graph_optimization]
    if tuning.cache_dir:
        cached = Path(tuning.cache_dir) / f"{sha[:16]}-{tuning.graph_optimization}.optimized.onnx"
        if cached.exists():  # optimised already: load it as it is
            model_path, options.graph_optimization_level = cached, LEVELS["disable"]
        else:  # each worker writes its own file, then renames: readers never see half a file
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_suffix(f".{os.getpid()}.partial")
            options.optimized_model_filepath = str(partial)
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail / InvalidGraph / InvalidProtobuf
        raise ServingError(f"{path} is not a loadable ONNX model: {exc}") from exc
    if partial is not None and partial.exists():
        os.replace(partial, cached)
    inputs = {}
    nullable = set(json.loads(session.get_modelmeta().custom_metadata_map.get("lakeloop.nullable", "[]")))
    for node in session.get_inputs():
        datatype = V2_OF_ONNX.get(node.type)
        if datatype is None:
            raise ServingError(f"{path}: input {node.name!r} has type {node.type}, which V2 cannot carry")
        inputs[node.name] = InputSpec(node.name, datatype, node.name in nullable)
    return LoadedModel(name, version, path, session, inputs, [o.name for o in session.get_outputs()], sha)
