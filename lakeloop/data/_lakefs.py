"""lakeFS clients with keys from Vault, and lakeFS failures turned into clear LakeFSErrors."""

from __future__ import annotations

import hashlib
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import lakefs
import urllib3.exceptions
from lakefs.exceptions import (
    ConflictException,
    LakeFSException,
    NotAuthorizedException,
    NotFoundException,
    handle_http_error,
)

from lakeloop.errors import LakeFSError, LakeFSUnreachableError, MergeConflictError
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
        raise LakeFSUnreachableError(f"lakeFS at {endpoint} is unreachable while {doing}: is the server running? "
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


_AUTH_SETTINGS = ["basic_auth", "cookie_auth", "oidc_auth", "saml_auth", "jwt_token"]
UPLOAD_CHUNK = 1 << 20


def upload_stream(client: lakefs.Client, repository: str, branch: str, path: str, source: BinaryIO,
                  content_type: str = "application/octet-stream", metadata: dict[str, str] | None = None
                  ) -> tuple[int, str]:
    """Upload a file object to a branch in 1 MiB chunks; returns (bytes sent, sha256 of them).

    The same request as the SDK's own raw upload (`ObjectWriter._upload_raw`: a chunked POST to
    `/branches/{branch}/objects` with `x-lakefs-meta-*` headers, authenticated by the SDK's client),
    but streamed straight from `source`: the SDK's writer first copies the whole object into a
    temporary file and sends it in 16 KiB chunks, which halves the throughput of large uploads.
    """
    api = client.sdk_client.objects_api.api_client
    resource = urllib.parse.quote(f"/repositories/{repository}/branches/{branch}/objects")
    url = f"{client.config.host}{resource}?{urllib.parse.urlencode({'path': path})}"
    headers = {"Accept": "application/json", "Content-Type": content_type}
    headers.update({f"x-lakefs-meta-{k}": v for k, v in (metadata or {}).items()})
    api.update_params_for_auth(headers, None, _AUTH_SETTINGS, resource, "POST", None)
    digest = hashlib.sha256()
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        while block := source.read(UPLOAD_CHUNK):
            digest.update(block)
            sent += len(block)
            yield block

    response = api.rest_client.pool_manager.request("POST", url, headers=headers, body=body(), chunked=True)
    handle_http_error(response)
    return sent, digest.hexdigest()
