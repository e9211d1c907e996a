"""The lakeloop exception tree.

    LakeloopError
    ├── ConfigError            a setting or parameter is missing or invalid
    │   └── ProjectError       a project file (lakeloop.yaml), its schema or a plug-in is invalid
    ├── DataValidationError    a batch broke the schema (carries the full report)
    ├── LakeFSError            lakeFS answered with an error or could not be reached
    │   ├── LakeFSUnreachableError  no answer at all (the only lakeFS error worth retrying)
    │   └── MergeConflictError the destination moved and the same paths changed on both sides
    ├── SecretsError           Vault could not give us a secret
    │   ├── VaultUnreachableError
    │   ├── VaultSealedError
    │   ├── VaultPermissionError
    │   └── SecretNotFoundError
    ├── DevStackError          the embedded stack could not start or stop
    ├── TrainingError
    ├── CompressionGateError
    ├── RegistryError
    ├── DeploymentError
    ├── ServingError
    └── DriftError

Messages name the bad value, where it was, and what to do. No message ever carries a
secret value.
"""

from __future__ import annotations

from typing import Any


class LakeloopError(Exception):
    """Base class of every error lakeloop raises on purpose."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # keep the context across pickling (Prefect stores task/flow exceptions)
        return (_rebuild, (type(self), self.message, self.context))


def _rebuild(cls: type[LakeloopError], message: str, context: dict[str, Any]) -> LakeloopError:
    return cls(message, **context)


class ConfigError(LakeloopError):
    """A setting or parameter is missing or invalid."""


class ProjectError(ConfigError):
    """A project file, its schema or its model plug-in is invalid; `problems` lists every one found."""

    @property
    def problems(self) -> list[str]:
        return list(self.context.get("problems") or [self.message])


class DataValidationError(LakeloopError):
    """A batch of data broke its schema; `report` holds every failure found."""


class LakeFSError(LakeloopError):
    """lakeFS answered with an error, or could not be reached."""


class LakeFSUnreachableError(LakeFSError):
    """No lakeFS server answered at the configured endpoint."""


class MergeConflictError(LakeFSError):
    """A merge found the same paths changed on both sides."""


class SecretsError(LakeloopError):
    """Vault could not give us a secret."""


class VaultUnreachableError(SecretsError):
    """No Vault server answered at the configured address."""


class VaultSealedError(SecretsError):
    """The Vault server is sealed."""


class VaultPermissionError(SecretsError):
    """Vault refused the login or the read (policy or credentials)."""


class SecretNotFoundError(SecretsError):
    """The secret path, version or key does not exist."""


class DevStackError(LakeloopError):
    """The embedded stack could not start, answer or stop."""


class TrainingError(LakeloopError):
    """Training failed."""


class CompressionGateError(LakeloopError):
    """No compressed candidate passed the accuracy and parity gates."""


class RegistryError(LakeloopError):
    """The model registry is missing a version, an alias or a valid signature."""


class DeploymentError(LakeloopError):
    """A deployment failed and was rolled back."""


class ServingError(LakeloopError):
    """The model server could not load, verify or serve a model."""


class DriftError(LakeloopError):
    """Drift could not be computed: the window does not match the model's reference."""
