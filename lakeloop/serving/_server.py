"""The model server's state: the models being served by name, hot swaps, API keys, metrics, inference logs."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lakeloop.errors import LakeloopError, ServingError
from lakeloop.serving._batching import Batcher, Batching
from lakeloop.serving._logs import InferenceLogger, background_priority
from lakeloop.serving._metrics import Metrics
from lakeloop.serving._model import LoadedModel, Tuning, load
from lakeloop.serving._protocol import InferRequest, Limits, check_outputs
from lakeloop.serving._sources import ModelSource

log = logging.getLogger("lakeloop.serving")
Discover = Callable[[], list[str]]  # the model names there are to serve now (e.g. every registered model)
SourceOf = Callable[[str], ModelSource]  # the source of a model by name (e.g. NAME@production in the registry)


class ServedModel:
    """One model name and the version it serves; swaps versions atomically.

    Requests read `self.model` once and use that object to the end: a swap only rebinds the
    attribute, so a request in flight finishes on the version it started with, and the old session
    is freed when its last request is done. A new version is downloaded and verified, loaded beside
    the old one, and must pass a smoke inference before the swap; otherwise the old one keeps
    serving and the refusal is logged, counted and remembered (not retried until asked).
    """

    def __init__(self, name: str, source: ModelSource, tuning: Tuning, metrics: Metrics) -> None:
        self.name, self.source, self.tuning, self.metrics = name, source, tuning, metrics
        self.model: LoadedModel | None = None
        self.refused: dict[str, str] = {}  # version -> why
        self._reload = threading.Lock()

    def refresh(self, force: bool = False) -> dict:
        """Swap to the source's target version if it changed.

        Args:
            force: retry a version that was refused before (an operator or a deploy asks for it).

        Returns:
            {"version": serving version, "swapped": bool}.

        Raises:
            ServingError / RegistryError / LakeFSError: the target could not be verified, loaded or
                smoke-tested; the previous version keeps serving.
        """
        with self._reload:
            target = self.source.target()
            current = self.model.version if self.model else None
            if target is None:
                if self.model is not None:  # the alias was removed (e.g. a first deploy rolled back)
                    log.warning("%s: %s names no version any more: stopped serving v%s", self.name,
                                self.source.describe(), current)
                    self.model = None
                    self.metrics.model_info.pop(self.name, None)
                raise ServingError(f"{self.source.describe()} names no version: nothing to serve")
            if target == current:
                return {"version": current, "swapped": False}
            if target in self.refused and not force:
                raise ServingError(f"{self.name} v{target} was refused earlier ({self.refused[target]}); still "
                                   f"serving {f'v{current}' if current else 'nothing'}")
            started = time.perf_counter()
            try:
                candidate = self._prepare(target)
            except LakeloopError as exc:
                self.refused[target] = str(exc)
                self.metrics.swaps[(self.name, "refused")] += 1
                log.error("%s: refused v%s, still serving %s: %s", self.name, target,
                          f"v{current}" if current else "nothing", exc)
                raise
            self.model = candidate  # the swap: one attribute rebind
            self.refused.pop(target, None)
            self.metrics.swaps[(self.name, "swapped")] += 1
            self.metrics.model_info[self.name] = {"version": target, "sha256": candidate.sha256[:12]}
            log.info("%s: now serving v%s (was %s; loaded and checked in %.2fs)", self.name, target,
                     f"v{current}" if current else "nothing", time.perf_counter() - started)
            return {"version": target, "swapped": True}

    def _prepare(self, version: str) -> LoadedModel:
        path: Path = self.source.fetch(version)
        model = load(path, self.name, version, self.tuning)
        if self.model is not None and set(model.inputs) != set(self.model.inputs):
            log.warning("%s v%s changes the inputs from %s to %s: clients must follow", self.name, version,
                        sorted(self.model.inputs), sorted(model.inputs))
        model.smoke()
        return model


class ModelServer:
    """Serves models by name: a fixed set, or (with `discover`) every one there is, found as they appear.

    Each model hot-swaps on its own (`ServedModel`); the API keys, the metrics and the inference
    log are shared. A watcher thread re-reads the keys, looks for new models and refreshes each one
    every `poll_seconds`; a load request (`load`) does the same for one model at once.
    """

    def __init__(self, models: dict[str, ModelSource], tuning: Tuning | None = None, limits: Limits | None = None,
                 api_keys: Callable[[], frozenset[str]] | None = None, inference_log: InferenceLogger | None = None,
                 poll_seconds: float = 5.0, discover: Discover | None = None, source_of: SourceOf | None = None,
                 batching: Batching | None = None) -> None:
        self.tuning, self.limits = tuning or Tuning(), limits or Limits()
        self.metrics = Metrics()
        self.models: dict[str, ServedModel] = {n: ServedModel(n, s, self.tuning, self.metrics) for n, s in
                                               models.items()}
        self.inference_log = inference_log
        self.poll_seconds = poll_seconds
        self._discover, self._source_of = discover, source_of
        self._required = tuple(models)
        self._api_keys_source = api_keys
        self.api_keys: frozenset[str] = frozenset()
        self._key_bytes: tuple[bytes, ...] = ()  # the same, encoded once per rotation for `authorized`
        self._adding = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._unloggable: set[tuple[str, str]] = set()
        self.batcher = Batcher(batching, self.record) if batching is not None else None

    def describe(self) -> str:
        return ", ".join(self.models) or "no model yet"

    @property
    def ready(self) -> bool:
        """Every model it was started with is loaded, and at least one model is: models found later
        (`discover`) do not hold up readiness (one project's rolled-back first deploy must not take the
        others out of a load balancer)."""
        models = self.models
        loaded = [m for m in models.values() if m.model is not None]
        return bool(loaded) and all(models[n].model is not None for n in self._required)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the API keys and each model's current version (if it has one), then watch for changes."""
        self.refresh_keys()
        self._poll(log.error)
        if self.inference_log is not None:
            self.inference_log.start()
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self.inference_log is not None:
            self.inference_log.close()

    def _poll(self, say: Callable[..., None], said: dict[str, str] | None = None) -> None:
        said = {} if said is None else said
        if self._discover is not None:
            try:
                for name in self._discover():
                    self.add(name)
                said.pop("", None)
            except LakeloopError as exc:
                if said.get("") != str(exc):
                    say("finding models to serve: %s", exc)
                    said[""] = str(exc)
        for name, served in list(self.models.items()):
            try:
                served.refresh()
                said.pop(name, None)
            except LakeloopError as exc:
                if said.get(name) != str(exc):  # say each problem once, not every poll
                    say("%s: %s", name, exc)
                    said[name] = str(exc)

    def _watch(self) -> None:
        background_priority()  # polls Vault and lakeFS: never ahead of a request for the CPU
        said: dict[str, str] = {}
        while not self._stop.wait(self.poll_seconds):
            if self.inference_log is not None:  # a starved writer is not stuck while no request comes
                self.inference_log.hurry_if_starved()
            try:
                self.refresh_keys()
                self._poll(log.warning, said)
            except LakeloopError as exc:
                log.warning("%s", exc)
            except Exception:  # the watcher must outlive any surprise
                log.exception("model watcher error")

    def add(self, name: str) -> ServedModel | None:
        """The served model `name`, added if models are found by name (None if this server cannot serve it)."""
        served = self.models.get(name)
        if served is not None or self._source_of is None:
            return served
        with self._adding:
            if name not in self.models:
                source = self._source_of(name)
                log.info("%s: found; following %s", name, source.describe())
                served = ServedModel(name, source, self.tuning, self.metrics)
                self.models = {**self.models, name: served}  # one rebind: readers never lock
            return self.models[name]

    def load(self, name: str) -> dict:
        """Load `name`'s target version now (retrying one refused before): what a deploy asks for.

        Raises:
            ServingError: this server does not serve `name`, or the version failed to verify or load.
        """
        known = name in self.models
        served = self.add(name)
        if served is None:
            raise ServingError(f"unknown model {name!r}: this server serves {self.describe()}")
        try:
            return served.refresh(force=True)
        except LakeloopError:
            if not known and served.model is None:  # asked for a model that has nothing to serve: forget it
                with self._adding:
                    self.models = {n: m for n, m in self.models.items() if n != name}
            raise

    # -- inference (shared by HTTP and gRPC) -----------------------------------------------------------

    def infer(self, name: str, model: LoadedModel, request: InferRequest, log_it: bool = True
              ) -> dict[str, np.ndarray]:
        """Run a parsed request on `model` (the version the request started on) and log it.

        Every output is computed, whichever the client asked for: a version's inference log keeps one
        schema. Logging never fails a request: a row that cannot be logged is counted as dropped.

        Raises:
            V2Error: a requested output the model does not have.
            Exception: ONNX Runtime's own, for a failure that is not the client's (the caller answers 500).
        """
        check_outputs(request.outputs, model.outputs)
        outputs = model.run(request.inputs)
        if self.batcher is not None:  # batching is on, and this request had nobody to be merged with
            self.batcher.ran_alone()
        if log_it:
            self.record(name, model, request, outputs)
        return outputs

    async def infer_batched(self, name: str, model: LoadedModel, request: InferRequest, log_it: bool = True
                            ) -> dict[str, np.ndarray]:
        """`infer` through the batcher: merged with the concurrent requests for the same version."""
        check_outputs(request.outputs, model.outputs)
        return await self.batcher.run(name, model, request, log_it)

    def submit_batched(self, name: str, model: LoadedModel, request: InferRequest, log_it: bool,
                       done: Callable[[dict[str, np.ndarray] | BaseException], None]) -> None:
        """`infer_batched` with a callback instead of an awaitable (no task per request)."""
        check_outputs(request.outputs, model.outputs)
        self.batcher.submit(name, model, request, log_it, done)

    def record(self, name: str, model: LoadedModel, request: InferRequest, outputs: dict[str, np.ndarray]) -> None:
        logger = self.inference_log
        if logger is None:
            return
        try:
            logger.record(name, model.version, request.rows, request.inputs, outputs)
        except Exception:
            if (name, model.version) not in self._unloggable:  # once per version, not once per request
                self._unloggable.add((name, model.version))
                log.exception("%s v%s: could not log an inference (answered; such rows are counted in "
                              "lakeloop_inference_log_dropped_rows)", name, model.version)
            logger.dropped_rows += request.rows

    # -- auth ------------------------------------------------------------------------------------

    def refresh_keys(self) -> None:
        """Re-read the API keys (they may be rotated in Vault while the server runs)."""
        if self._api_keys_source is not None:
            self.api_keys = self._api_keys_source()
            self._key_bytes = tuple(key.encode() for key in self.api_keys)

    @property
    def open(self) -> bool:
        return self._api_keys_source is None

    def authorized(self, header: str | None) -> bool:
        if self.open:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        presented = header[7:].strip().encode()
        found = False
        for key in self._key_bytes:  # every key compared, in constant time: how many match reveals nothing either
            found |= hmac.compare_digest(presented, key)
        return found
