"""Where a served model comes from: a local ONNX file, or a registry alias (verified on every load)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Protocol

from lakeloop.errors import ServingError
from lakeloop.registry import Registry


class ModelSource(Protocol):
    def describe(self) -> str: ...

    def target(self) -> str | None:
        """The version that should be serving now (None: nothing to serve yet)."""

    def fetch(self, version: str) -> Path:
        """A local, verified ONNX file of `version`."""


class FileSource:
    """A local ONNX file; its version is the first 12 hex digits of its sha256 (changes when it does)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def target(self) -> str | None:
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest()[:12]
        except OSError as exc:
            raise ServingError(f"cannot read the model file {self.path}: {exc.strerror}") from exc

    def fetch(self, version: str) -> Path:
        return self.path


class RegistrySource:
    """`name@alias` in the signed registry: each version is downloaded, its signature and every sha256
    checked, before it may load (`Registry.fetch` refuses anything else)."""

    ONNX_FILE = "model.onnx"

    def __init__(self, registry: Registry, name: str, alias: str, cache_dir: Path) -> None:
        self.registry, self.name, self.alias, self.cache_dir = registry, name, alias, cache_dir

    def describe(self) -> str:
        return f"{self.registry.repository}: {self.name}@{self.alias}"

    def target(self) -> str | None:
        version = self.registry.alias(self.name, self.alias)
        return None if version is None else str(version)

    def fetch(self, version: str) -> Path:
        dest = self.cache_dir / self.name / f"v{version}"
        if dest.exists():
            shutil.rmtree(dest)  # never trust what is on disk: download and verify again
        _, folder = self.registry.fetch(self.name, int(version), dest, only=[self.ONNX_FILE])
        return folder / self.ONNX_FILE
