"""The model server's state: the model being served, hot swaps, API keys, metrics, inference logs."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from lakeloop.errors import LakeloopError, ServingError
from lakeloop.serving._logs import InferenceLogger, background_priority
from lakeloop.serving._metrics import Metrics
from lakeloop.serving._model import LoadedModel, Tuning, load
from lakeloop.serving._sources import ModelSource

log = logging.getLogger("lakeloop.serving")


class ModelServer:
    """Serves one model name; swaps versions atomically.

    Requests read `self.model` once and use that object to the end: a swap only rebinds the
    attribute, so a request in flight finishes on the version it started with, and the old session
    is freed when its last request is done. A new version is downloaded and verified, loaded beside
    the old one, and must pass a smoke inference before the swap; otherwise the old one keeps
    serving and the refusal is logged, counted and remembered (not retried until asked).
    """

    def __init__(self, name: str, source: ModelSource, tuning: Tuning | None = None, max_batch: int = 1024,
                 api_keys: Callable[[], frozenset[str]] | None = None, inference_log: InferenceLogger | None = None,
                 poll_seconds: float = 5.0) -> None:
        self.name, self.source, self.tuning, self.max_batch = name, source, tuning or Tuning(), max_batch
        self.model: LoadedModel | None = None
        self.metrics = Metrics()
        self.inference_log = inference_log
        self.poll_seconds = poll_seconds
        self.refused: dict[str, str] = {}  # version -> why
        self._api_keys_source = api_keys
        self.api_keys: frozenset[str] = frozenset()
        self._reload = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the API keys and the current version (if there is one), then watch for changes."""
        self.refresh_keys()
        try:
            self.refresh()
        except LakeloopError as exc:
            log.error("%s: not serving yet: %s", self.name, exc)
        if self.inference_log is not None:
            self.inference_log.start()
        self._watcher.start()

    def close(self) -> None:
        self._stop.set()
        if self.inference_log is not None:
            self.inference_log.close()

    def _watch(self) -> None:
        background_priority()  # polls Vault and lakeFS: never ahead of a request for the CPU
        said = ""
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh_keys()
                self.refresh()
                said = ""
            except LakeloopError as exc:
                if str(exc) != said:  # say each problem once, not every poll
                    log.warning("%s: %s", self.name, exc)
                    said = str(exc)
            except Exception:  # the watcher must outlive any surprise
                log.exception("%s: model watcher error", self.name)

    # -- auth ------------------------------------------------------------------------------------

    def refresh_keys(self) -> None:
        """Re-read the API keys (they may be rotated in Vault while the server runs)."""
        if self._api_keys_source is not None:
            self.api_keys = self._api_keys_source()

    @property
    def open(self) -> bool:
        return self._api_keys_source is None

    def authorized(self, header: str | None) -> bool:
        if self.open:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        presented = header[7:].strip().encode()
        return any(hmac.compare_digest(presented, key.encode()) for key in self.api_keys)

    # -- hot swap --------------------------------------------------------------------------------

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
                    self.model, self.metrics.model_info = None, {}
                raise ServingError(f"{self.source.describe()} names no version: nothing to serve")
            if target == current:
                return {"version": current, "swapped": False}
            if target in self.refused and not force:
                raise ServingError(f"{self.name} v{target} was refused earlier ({self.refused[target]}); still "
                                   f"serving v{current}")
            started = time.perf_counter()
            try:
                candidate = self._prepare(target)
            except LakeloopError as exc:
                self.refused[target] = str(exc)
                self.metrics.swaps["refused"] += 1
                log.error("%s: refused v%s, still serving %s: %s", self.name, target,
                          f"v{current}" if current else "nothing", exc)
                raise
            self.model = candidate  # the swap: one attribute rebind
            self.refused.pop(target, None)
            self.metrics.swaps["swapped"] += 1
            self.metrics.model_info = {"model": self.name, "version": target, "sha256": candidate.sha256[:12]}
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
