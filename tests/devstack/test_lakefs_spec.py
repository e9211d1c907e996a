"""Every operation lakeloop uses, sent raw and checked against the official lakeFS OpenAPI spec."""

from __future__ import annotations

import copy
import re
import uuid
from pathlib import Path

import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from requests.structures import CaseInsensitiveDict

pytestmark = pytest.mark.lakefs
SPEC = Path(__file__).resolve().parents[1] / "data" / "lakefs-api.yml"


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    return OpenAPI.from_file_path(str(SPEC))


class CheckedSession:
    """A requests session whose every response must match the spec."""

    def __init__(self, server, openapi: OpenAPI, auth=None) -> None:
        self.base = f"{server.endpoint}/api/v1"
        self.session = requests.Session()
        self.session.auth = auth or (server.access_key_id, server.secret_access_key)
        self.openapi = openapi
        self.checked: list[str] = []

    def call(self, method: str, path: str, expect: int, **kwargs) -> requests.Response:
        response = self.session.request(method, self.base + path, **kwargs)
        assert response.status_code == expect, (method, path, response.status_code, response.text)
        checked = copy.copy(response)
        if "Content-Range" in response.headers:
            # Known defect of the spec: it gives Content-Range the request's `bytes=a-b` pattern,
            # while lakeFS and the SDK use RFC 9110's `bytes a-b/size` (the SDK parses `/size`).
            assert re.fullmatch(r"bytes (\d+-\d+|\*)/\d+", response.headers["Content-Range"])
            checked.headers = CaseInsensitiveDict(response.headers)
            del checked.headers["Content-Range"]
        self.openapi.validate_response(RequestsOpenAPIRequest(response.request),
                                       RequestsOpenAPIResponse(checked))
        self.checked.append(f"{method} {path.split('?')[0]} -> {expect}")
        return response


def test_responses_match_the_official_spec(lakefs_server, openapi):
    api = CheckedSession(lakefs_server, openapi)
    name = f"s-{uuid.uuid4().hex[:10]}"
    r = f"/repositories/{name}"
    api.call("GET", "/healthcheck", 204)
    assert api.call("GET", "/config", 200).json()["storage_config"]["pre_sign_support"] is False
    api.call("POST", "/repositories", 201,
             json={"name": name, "storage_namespace": f"{lakefs_server.namespace_prefix}/{name}"})
    api.call("POST", "/repositories", 409,
             json={"name": name, "storage_namespace": f"{lakefs_server.namespace_prefix}/{name}-2"})
    api.call("POST", "/repositories", 400, json={"name": "No_Caps!", "storage_namespace": "local://x"})
    api.call("GET", r, 200)
    api.call("GET", f"/repositories?prefix={name}&amount=1", 200)
    api.call("GET", "/repositories/no-such-repo-here", 404)
    api.call("GET", f"{r}/metadata", 200)

    api.call("POST", f"{r}/branches", 201, json={"name": "dev", "source": "main"})
    api.call("POST", f"{r}/branches", 409, json={"name": "dev", "source": "main"})
    api.call("GET", f"{r}/branches", 200)
    api.call("GET", f"{r}/branches/dev", 200)
    api.call("GET", f"{r}/branches/missing", 404)

    headers = {"Content-Type": "text/plain", "x-lakefs-meta-origin": "spec-test"}
    body = b"0123456789" * 100
    api.call("POST", f"{r}/branches/dev/objects?path=d/a.txt", 201, data=body, headers=headers)
    api.call("POST", f"{r}/branches/dev/objects?path=d/a.txt", 412, data=b"x",
             headers={"If-None-Match": "*"})
    api.call("POST", f"{r}/branches/dev/objects?path=d/form.bin", 201,
             files={"content": ("form.bin", b"multipart body", "application/x-test")})
    stat = api.call("GET", f"{r}/refs/dev/objects/stat?path=d/a.txt", 200).json()
    assert stat["metadata"] == {"origin": "spec-test"} and stat["size_bytes"] == len(body)
    assert api.call("GET", f"{r}/refs/dev/objects/stat?path=d/form.bin", 200).json()["content_type"] \
        == "application/x-test"
    api.call("GET", f"{r}/refs/dev/objects/stat?path=nope", 404)
    # the spec declares object bodies as application/octet-stream, so read one stored as such
    api.call("POST", f"{r}/branches/dev/objects?path=d/b.bin", 201, data=body)
    part = api.call("GET", f"{r}/refs/dev/objects?path=d/b.bin", 206, headers={"Range": "bytes=10-19"})
    assert part.content == body[10:20] and part.headers["Content-Range"] == f"bytes 10-19/{len(body)}"
    assert api.call("GET", f"{r}/refs/dev/objects?path=d/b.bin", 200).content == body
    api.call("GET", f"{r}/refs/dev/objects?path=d/b.bin", 416, headers={"Range": "bytes=5000-"})
    assert api.call("HEAD", f"{r}/refs/dev/objects?path=d/b.bin", 200).headers["Content-Length"] \
        == str(len(body))
    api.call("GET", f"{r}/refs/dev/objects/ls?prefix=d/&amount=1", 200)
    api.call("GET", f"{r}/refs/dev/objects/ls?delimiter=/", 200)
    api.call("GET", f"{r}/branches/dev/diff", 200)

    commit = api.call("POST", f"{r}/branches/dev/commits", 201,
                      json={"message": "spec commit", "metadata": {"k": "v"}}).json()
    api.call("POST", f"{r}/branches/dev/commits", 400, json={"message": "nothing staged"})
    api.call("GET", f"{r}/commits/{commit['id']}", 200)
    api.call("GET", f"{r}/refs/dev/commits?amount=1", 200)
    api.call("GET", f"{r}/refs/main/diff/dev", 200)
    api.call("GET", f"{r}/refs/dev/merge/main", 200)
    merged = api.call("POST", f"{r}/refs/dev/merge/main", 200, json={"message": "spec merge"}).json()
    assert len(merged["reference"]) == 64
    api.call("POST", f"{r}/refs/dev/merge/main", 400, json={})  # nothing left to merge

    api.call("POST", f"{r}/branches/dev/objects?path=d/a.txt", 201, data=b"dev side")
    api.call("POST", f"{r}/branches/dev/commits", 201, json={"message": "dev edit"})
    api.call("POST", f"{r}/branches/main/objects?path=d/a.txt", 201, data=b"main side")
    api.call("POST", f"{r}/branches/main/commits", 201, json={"message": "main edit"})
    api.call("POST", f"{r}/refs/dev/merge/main", 409, json={})

    api.call("POST", f"{r}/tags", 201, json={"id": "v1", "ref": "main"})
    api.call("POST", f"{r}/tags", 409, json={"id": "v1", "ref": "main"})
    api.call("GET", f"{r}/tags", 200)
    api.call("GET", f"{r}/tags/v1", 200)
    api.call("DELETE", f"{r}/tags/v1", 204)

    api.call("DELETE", f"{r}/branches/dev/objects?path=d/form.bin", 204)
    api.call("POST", f"{r}/branches/dev/objects/delete", 200, json={"paths": ["d/a.txt", "d/b.bin"]})
    api.call("PUT", f"{r}/branches/dev", 204, json={"type": "reset"})
    api.call("DELETE", f"{r}/branches/dev", 204)
    api.call("DELETE", r, 204)

    unauthorized = CheckedSession(lakefs_server, openapi, auth=("AKIAWRONG", "wrong"))
    unauthorized.call("GET", "/repositories", 401)
    assert len(api.checked) > 40


def test_a_request_head_over_a_megabyte_is_refused_as_lakefs_refuses_it(lakefs_server):
    """lakeFS (Go's net/http) answers 431 to a request head above its 1 MB bound; so does the embedded one."""
    auth = (lakefs_server.access_key_id, lakefs_server.secret_access_key)
    url = f"{lakefs_server.endpoint}/api/v1/user"
    assert requests.get(url, auth=auth, headers={"x-note": "a" * 1000}, timeout=30).status_code == 200
    assert requests.get(url, auth=auth, headers={"x-note": "a" * (2 * 1024 * 1024)}, timeout=30).status_code == 431
    assert requests.get(url, auth=auth, timeout=30).status_code == 200
