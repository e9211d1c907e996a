"""What a hostile or broken client can reach: oversized, truncated, slow and garbage requests, huge heads,
wrong methods. Each gets a bounded, clear answer (or the connection closed), and the server stays healthy,
its memory bounded, every good request answered right — on both HTTP layers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import numpy as np
import psutil
import pytest

from tests.serving.conftest import answer_of, lakeloop_serve, rows, run_concurrently

KEY = "hostile-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 256 * 1024


@pytest.fixture(scope="module", params=["lakeloop", "uvicorn"])
def server(model_file, tmp_path_factory, request):
    """The same bounds on both HTTP layers: lakeloop's compiled front (the default) and uvicorn."""
    tmp = tmp_path_factory.mktemp("hostile")
    args = ["--onnx", str(model_file), "--name", "fraud", "--workers", "1", "--api-key", KEY,
            "--max-body-bytes", str(MAX_BODY), "--body-timeout", "1", "--header-timeout", "1",
            "--no-inference-logs", "--http", request.param]
    with lakeloop_serve(args, tmp) as served:
        yield served


def good_body(n: int = 2, seed: int = 0) -> tuple[bytes, np.ndarray]:
    batch = rows(n, seed)
    inputs = [{"name": k, "shape": [n, 1], "datatype": "BYTES" if v.dtype == object else "FP32",
               "data": v.ravel().tolist()} for k, v in batch.items()]
    return json.dumps({"inputs": inputs}).encode(), batch


def raw(server, data: bytes, read_timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; return what the server answers until it closes or goes quiet."""
    host, port = server.hostport.split(":")
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
        except TimeoutError:
            pass
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def test_a_body_over_the_limit_is_refused_from_its_content_length(server):
    started = time.monotonic()
    head = (f"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-type: application/json\r\ncontent-length: {300 * 1024 * 1024}\r\n\r\n").encode()
    answer = raw(server, head + b"{" * 1000)
    assert status(answer) == 413 and b"limit of 262,144 bytes" in answer and b"--max-body-bytes" in answer
    assert time.monotonic() - started < 3  # not read for seconds first


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    def chunks():
        for _ in range(64):
            yield b"x" * 65536  # 4 MB in all, no Content-Length
    answer = httpx.post(f"{server.url}/v2/models/fraud/infer", content=chunks(), headers=AUTH, timeout=10)
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]


def test_a_body_that_never_completes_gets_408(server):
    head = (f"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-length: 1000\r\n\r\n").encode()
    started = time.monotonic()
    answer = raw(server, head + b'{"inputs": [', read_timeout=10)
    assert status(answer) == 408 and b"not complete within 1 s" in answer
    assert 0.8 < time.monotonic() - started < 5


def test_a_head_sent_byte_by_byte_is_cut_off(server):
    host, port = server.hostport.split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nx-slow: ")
        answer = b""
        try:
            for _ in range(40):
                sock.sendall(b"a")
                time.sleep(0.1)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    answer += sock.recv(4096)
                sock.setblocking(True)
                if answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert status(answer) == 408 and b"not complete within 1 s" in answer
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("size", [20_000, 1024 * 1024])
def test_a_huge_head_gets_431(server, size):
    answer = raw(server, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * size + b"\r\n\r\n")
    assert status(answer) == 431 and b"larger than 16384 bytes" in answer


def test_many_headers_get_431(server):
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50)
                                                                     for i in range(2000))
    assert status(raw(server, head + b"\r\n")) == 431


@pytest.mark.parametrize("method,path,allow", [("GET", "/v2/models/fraud/infer", "POST"),
                                               ("POST", "/v2/health/live", "GET"),
                                               ("DELETE", "/v2/models/fraud", "GET"),
                                               ("GET", "/v2/repository/index", "POST"),
                                               ("GET", "/v2/repository/models/fraud/load", "POST")])
def test_a_wrong_method_on_a_known_path_is_405_with_allow(server, method, path, allow):
    answer = httpx.request(method, f"{server.url}{path}", headers=AUTH)
    assert answer.status_code == 405 and answer.headers["allow"] == allow
    assert f"{method} is not allowed on {path}" in answer.json()["error"]
    assert httpx.get(f"{server.url}/v2/models/fraud/nothing", headers=AUTH).status_code == 404


def test_ten_thousand_hostile_requests_leave_it_healthy_and_every_good_one_answered(server, model_file):
    """Garbage, oversized, truncated, slow, malformed and good requests, interleaved from 16 clients."""
    host, port = server.hostport.split(":")
    good, batch = good_body(3, seed=9)
    expected = answer_of(model_file, batch).ravel()
    infer = f"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
    kinds = {
        "good": (infer + f"content-length: {len(good)}\r\n\r\n").encode() + good,
        "garbage": np.random.default_rng(1).integers(0, 256, 512, dtype=np.uint8).tobytes() + b"\r\n\r\n",
        "oversized": (infer + f"content-length: {MAX_BODY * 40}\r\n\r\n").encode() + b"[" * 65536,
        "truncated": (infer + "content-length: 5000\r\n\r\n").encode() + good[:100],
        "malformed": (infer + "content-length: 11\r\n\r\n").encode() + b'{"inputs": ',
        "smuggle": (infer + "content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n").encode(),
    }
    plan = ["good"] * 4000 + ["garbage"] * 2000 + ["oversized"] * 1500 + ["truncated"] * 1500 + \
        ["malformed"] * 940 + ["smuggle"] * 10 + ["slow"] * 50
    plan = list(np.random.default_rng(2).permutation(plan))
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    outcome: dict[str, dict[int, int]] = {k: {} for k in [*kinds, "slow"]}
    wrong_answers = []

    async def one(kind: str) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            if kind == "slow":  # a body that trickles in slower than the 1 s limit
                writer.write((infer + "content-length: 400\r\n\r\n").encode())
                for _ in range(30):
                    writer.write(b" ")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            elif kind == "truncated":  # half a body, then the client goes away
                writer.write(kinds[kind])
                await writer.drain()
                return
            else:
                writer.write(kinds[kind])
                await writer.drain()
            answer = await asyncio.wait_for(reader.read(1 << 20), 10)
            while answer and not _complete(answer):
                more = await asyncio.wait_for(reader.read(1 << 20), 10)
                if not more:
                    break
                answer += more
            code = status(answer)
            outcome[kind][code] = outcome[kind].get(code, 0) + 1
            if kind == "good":
                data = json.loads(answer.partition(b"\r\n\r\n")[2])
                got = np.asarray(data["outputs"][0]["data"], dtype=np.float32)
                if data["outputs"][0]["name"] != "probability" or not np.allclose(got, expected, rtol=1e-5):
                    wrong_answers.append(data)
        except (ConnectionError, TimeoutError):
            outcome[kind][-1] = outcome[kind].get(-1, 0) + 1
        finally:
            writer.close()

    started = time.monotonic()
    run_concurrently(plan, one, clients=16)
    elapsed = time.monotonic() - started
    assert outcome["good"] == {200: 4000}, outcome
    assert not wrong_answers
    assert set(outcome["oversized"]) == {413} and set(outcome["malformed"]) == {400}
    assert set(outcome["garbage"]) <= {400, -1} and set(outcome["smuggle"]) <= {400, -1}
    assert outcome["slow"] == {408: 50}, outcome
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    grown = process.memory_info().rss - rss_before
    assert grown < 100 * 1024 * 1024, f"the server grew by {grown / 1e6:.0f} MB"
    assert elapsed < 240
