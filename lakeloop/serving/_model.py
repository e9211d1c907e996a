"""An ONNX model ready to serve: an ONNX Runtime session tuned for CPUs, its V2 inputs, a smoke check."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, Field

from lakeloop.errors import ServingError
from lakeloop.packing import INPUTS_KEY, pack, packing_of
from lakeloop.serving._protocol import NUMPY_OF, Inputs, InputSpec

try:  # a packed input's columns side by side in one C call (lakeloop/serving/_tensors.c)
    from lakeloop.serving._tensors import pack as _pack
except ImportError:  # not built here: numpy's concatenate
    _pack = None

V2_OF_ONNX = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
              "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16",
              "tensor(int32)": "INT32", "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32",
              "tensor(double)": "FP64", "tensor(string)": "BYTES"}
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
    inputs: Inputs  # the V2 inputs: one per feature column of a lakeloop model
    outputs: list[str]
    sha256: str
    packing: dict[str, list[str]] = field(default_factory=dict)  # graph input -> the V2 inputs it packs
    loaded_at: float = field(default_factory=time.time)
    labels: dict[str, list[str]] = field(default_factory=dict)  # output -> names of its entries (class names)

    @functools.cached_property
    def batchable(self) -> bool:
        """Whether requests can be merged into one call exactly: every input and output has a free first
        (batch) dimension."""
        return (all(spec.shape and spec.shape[0] == -1 for spec in self.inputs.values())
                and all(o.shape and not isinstance(o.shape[0], int) for o in self.session.get_outputs()))

    def metadata(self) -> dict:
        """`GET /v2/models/{name}`: every tensor with its datatype and shape (-1: a free dimension)."""
        return {"name": self.name, "versions": [self.version], "platform": "onnxruntime_onnx",
                "inputs": [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)}
                           for s in self.inputs.values()],
                "outputs": [{"name": o.name, "datatype": V2_OF_ONNX.get(o.type, o.type), "shape": _dims(o.shape)}
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
        return dict(zip(names, self._run(names, self._feeds(feeds), None), strict=True))

    @functools.cached_property
    def _run(self) -> Callable:
        """The session's compiled `run(names, feeds, options)`, without the Python wrapper's checks for what this
        server never does (graph capture, OrtValues it does not own, other execution providers to fall back
        to; the feeds always name every graph input): 1.4 of ~14 µs a single fraud row. The wrapper where
        a release of ONNX Runtime has no such attribute."""
        return getattr(getattr(self.session, "_sess", None), "run", None) or self.session.run

    @functools.cached_property
    def _packed(self) -> tuple[tuple[str, tuple[str, ...]], ...] | None:
        """The packing for the compiled `pack`: (graph input, its columns) for each packed input; None where
        it does not apply (not built, nothing packed, or inputs the packing leaves as they are)."""
        if _pack is None or not self.packing or len(self.inputs) != sum(map(len, self.packing.values())):
            return None
        return tuple((name, tuple(columns)) for name, columns in self.packing.items())

    def _feeds(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph's inputs from the V2 columns (`lakeloop.packing.pack`, compiled where it can be)."""
        if self._packed is not None:
            feeds = {}
            for name, names in self._packed:
                packed = _pack(columns, names)
                if packed is None:
                    return pack(columns, self.packing)
                feeds[name] = packed
            return feeds
        return pack(columns, self.packing)

    def smoke(self) -> None:
        """One inference on a neutral input (zeros, false, empty strings; every free dimension 1, fixed ones
        as declared) must give finite outputs.

        Raises:
            ServingError: the model fails or answers NaN/inf: it must not serve.
        """
        feeds = {}
        for s in self.inputs.values():
            shape = tuple(1 if d == -1 else d for d in s.shape)
            feeds[s.name] = (np.full(shape, "", dtype=object) if s.datatype == "BYTES"
                             else np.zeros(shape, dtype=NUMPY_OF[s.datatype]))
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
    inputs = Inputs()
    meta = session.get_modelmeta().custom_metadata_map
    nullable = set(json.loads(meta.get("lakeloop.nullable", "[]")))
    try:
        packing = packing_of(meta)
    except (ValueError, AttributeError) as exc:
        raise ServingError(f"{path}: its {INPUTS_KEY} metadata is not a JSON object of column lists: {exc}") from exc
    graph_inputs = {node.name for node in session.get_inputs()}
    if set(packing) - graph_inputs:
        raise ServingError(f"{path}: its {INPUTS_KEY} metadata packs {sorted(set(packing) - graph_inputs)}, which "
                           f"are not inputs of the graph ({sorted(graph_inputs)})")
    for node in session.get_inputs():
        datatype = V2_OF_ONNX.get(node.type)
        if datatype is None:
            raise ServingError(f"{path}: input {node.name!r} has type {node.type}, which V2 cannot carry")
        if node.name in packing:  # a packed input is offered column by column, [N, 1] each
            for column in packing[node.name]:
                inputs[column] = InputSpec(column, datatype, (-1, 1), column in nullable)
        else:
            inputs[node.name] = InputSpec(node.name, datatype, _dims(node.shape), node.name in nullable)
    for node in session.get_outputs():
        if node.type not in V2_OF_ONNX:
            raise ServingError(f"{path}: output {node.name!r} has type {node.type}, which V2 cannot carry")
    labels = {}
    if meta.get("lakeloop.task") == "multiclass" and "lakeloop.classes" in meta:
        labels["probabilities"] = [str(c) for c in json.loads(meta["lakeloop.classes"])]
    return LoadedModel(name, version, path, session, inputs, [o.name for o in session.get_outputs()], sha, packing,
                       labels=labels)


def _dims(shape: list) -> tuple[int, ...]:
    """ONNX Runtime's declared shape in V2's terms: a fixed size, or -1 for a named or unknown dimension."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)
