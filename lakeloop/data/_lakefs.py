"""lakeFS clients with keys from Vault, and lakeFS failures turned into clear LakeFSErrors."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lakefs
import urllib3.exceptions
from lakefs.exceptions import ConflictException, LakeFSException, NotAuthorizedException, NotFoundException

from lakeloop.errors import LakeFSError, MergeConflictError
from lakeloop.secrets import VaultClient


def lakefs_client(endpoint: str, vault: VaultClient, path: str, version: int | None = None) -> lakefs.Client:
    """An SDK client for `endpoint` whose keys are read from Vault KV v2 at `path` now."""
    keys = vault.read(path, version)
    missing = [k for k in ("access_key_id", "secret_access_key") if not keys.get(k)]
    if missing:
        raise LakeFSError(f"Vault secret {vault.settings.kv_mount}/{path} lacks {', '.join(missing)}: store "
                          "the lakeFS access keys there")
    return lakefs.Client(host=endpoint.rstrip("/").removesuffix("/api/v1"),
                           username=keys["access_key_id"], password=keys["secret_access_key"])


@contextmanager
def lakefs_errors(endpoint: str, doing: str) -> Iterator[None]:
    """Map SDK and connection errors to LakeFSError with one clear line."""
    endpoint = endpoint.rstrip("/").removesuffix("/api/v1")
    try:
        yield
    except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
        raise LakeFSError(f"lakeFS at {endpoint} is unreachable while {doing}: is the server running? "
                          "(`lakeloop dev up` starts the embedded one)", endpoint=endpoint) from exc
    except NotAuthorizedException as exc:
        raise LakeFSError(f"lakeFS at {endpoint} rejected the access keys while {doing}: check the keys "
                          "stored in Vault", endpoint=endpoint) from exc
    except ConflictException as exc:
        raise MergeConflictError(f"lakeFS conflict while {doing}: {_reason(exc)}", endpoint=endpoint) from exc
    except NotFoundException as exc:
        raise LakeFSError(f"lakeFS: not found while {doing}: {_reason(exc)}", endpoint=endpoint) from exc
    except LakeFSException as exc:
        raise LakeFSError(f"lakeFS error while {doing}: {_reason(exc)}", endpoint=endpoint) from exc


def _reason(exc: LakeFSException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return getattr(exc, "reason", None) or str(exc).splitlines()[0]
