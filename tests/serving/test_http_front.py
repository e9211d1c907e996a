"""lakeloop's compiled HTTP/1.1 front (`lakeloop serve`'s default HTTP layer), over raw sockets: what a
client may do within HTTP/1.1 beyond one request per connection — pipelining, keep-alive, HTTP/1.0,
`Expect: 100-continue`, HEAD, chunked bodies, heads split across packets — and a large body refused
before it is read. The limits (431, 408, 413, 400) are tested on both layers in test_hostile_clients."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.serving.conftest import answer_of, lakeloop_serve, rows

KEY = "front-key"


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    with lakeloop_serve(["--onnx", str(model_file), "--name", "fraud", "--workers", "1", "--api-key", KEY,
                         "--no-inference-logs"], tmp_path_factory.mktemp("front")) as served:
        yield served


def body_of(n: int, seed: int) -> tuple[bytes, np.ndarray]:
    batch = rows(n, seed)
    inputs = [{"name": k, "shape": [n, 1], "datatype": "BYTES" if v.dtype == object else "FP32",
               "data": v.ravel().tolist()} for k, v in batch.items()]
    return json.dumps({"inputs": inputs}).encode(), batch


def infer_request(body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST /v2/models/fraud/infer HTTP/{version}\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


def read_answers(sock: socket.socket, count: int, timeout: float = 10, heads: frozenset[int] = frozenset()
                 ) -> list[tuple[int, dict, bytes]]:
    """Parse `count` answers off the socket: (status, headers, body) each; those numbered in `heads`
    answer a HEAD request (a Content-Length but no body)."""
    sock.settimeout(timeout)
    data, answers = b"", []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {len(answers)} answers"
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        size = 0 if len(answers) in heads else int(headers.get("content-length", 0))
        if status == 100:
            answers.append((status, headers, b""))
            continue
        while len(data) < size:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-answer"
            data += chunk
        answers.append((status, headers, data[:size]))
        data = data[size:]
    return answers


def probabilities(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["outputs"][0]["data"], np.float32)


def connect(server) -> socket.socket:
    host, port = server.hostport.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_the_default_http_layer_is_the_compiled_front(server):
    assert "http     lakeloop's compiled front" in server.output()


def test_pipelined_requests_are_answered_in_order_on_one_connection(server, model_file):
    bodies = [body_of(n, seed) for n, seed in [(1, 1), (3, 2), (2, 3), (5, 4)]]
    with connect(server) as sock:
        sock.sendall(b"".join(infer_request(b) for b, _ in bodies) + b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        answers = read_answers(sock, len(bodies) + 1)
    for (status, _, body), (_, batch) in zip(answers, bodies, strict=False):
        assert status == 200
        np.testing.assert_allclose(probabilities(body), answer_of(model_file, batch).ravel(), rtol=1e-5)
    assert answers[-1][0] == 200 and json.loads(answers[-1][2]) == {"live": True}


def test_a_request_split_across_many_packets_is_answered(server, model_file):
    body, batch = body_of(4, 5)
    data = infer_request(body)
    with connect(server) as sock:
        for start in range(0, len(data), 97):
            sock.sendall(data[start:start + 97])
            time.sleep(0.001)
        (status, _, answer), = read_answers(sock, 1)
    assert status == 200
    np.testing.assert_allclose(probabilities(answer), answer_of(model_file, batch).ravel(), rtol=1e-5)


def test_keep_alive_and_connection_close(server):
    body, _ = body_of(1, 6)
    with connect(server) as sock:  # HTTP/1.1: the connection stays for the next request
        sock.sendall(infer_request(body))
        assert read_answers(sock, 1)[0][0] == 200
        sock.sendall(infer_request(body, "connection: close\r\n"))
        (status, headers, _), = read_answers(sock, 1)
        assert status == 200 and headers["connection"] == "close"
        assert sock.recv(10) == b""  # then it closes
    with connect(server) as sock:  # HTTP/1.0 closes unless asked to keep the connection
        sock.sendall(infer_request(body, version="1.0"))
        assert read_answers(sock, 1)[0][0] == 200
        assert sock.recv(10) == b""


def test_expect_100_continue_gets_continue_before_the_body(server, model_file):
    body, batch = body_of(2, 7)
    head = infer_request(body, "expect: 100-continue\r\n")[:-len(body)]
    with connect(server) as sock:
        sock.sendall(head)
        (status, _, _), = read_answers(sock, 1)
        assert status == 100
        sock.sendall(body)
        (status, _, answer), = read_answers(sock, 1)
    assert status == 200
    np.testing.assert_allclose(probabilities(answer), answer_of(model_file, batch).ravel(), rtol=1e-5)


def test_head_answers_without_a_body(server):
    with connect(server) as sock:
        sock.sendall(b"HEAD /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\nGET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        first, second = read_answers(sock, 2, heads=frozenset({0}))
    assert first[0] == 405 and first[2] == b"" and int(first[1]["content-length"]) > 0
    assert second[0] == 200 and json.loads(second[2]) == {"live": True}


@pytest.mark.parametrize("piece", [None, 7, 333])
def test_a_chunked_body_is_decoded(server, model_file, piece):
    """Sent at once, or in pieces that cut chunk-size lines and chunk data anywhere (the front checks
    each chunk once, resuming where the previous read stopped)."""
    body, batch = body_of(3, 8)
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 50]), body[i:i + 50]) for i in range(0, len(body), 50))
    head = (f"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n"
            "transfer-encoding: chunked\r\n\r\n").encode()
    data = head + chunks + b"0\r\nx-trailer: 1\r\n\r\n"
    with connect(server) as sock:
        for start in range(0, len(data), piece or len(data)):
            sock.sendall(data[start:start + (piece or len(data))])
            if piece:
                time.sleep(0.0005)
        (status, _, answer), = read_answers(sock, 1)
    assert status == 200
    np.testing.assert_allclose(probabilities(answer), answer_of(model_file, batch).ravel(), rtol=1e-5)


def test_a_large_body_without_a_key_is_refused_before_it_is_sent(server):
    """The head is enough to refuse: the client gets its 401 without sending a byte of its 10 MB body."""
    head = b"POST /v2/models/fraud/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(head)
        (status, headers, answer), = read_answers(sock, 1, timeout=5)
    assert status == 401 and headers["connection"] == "close" and b"API key" in answer


def test_percent_encoded_paths_are_decoded(server):
    answer = httpx.get(f"{server.url}/v2/models/%66raud/ready")
    assert answer.status_code == 200 and answer.json() == {"ready": True}
    assert httpx.get(f"{server.url}/v2/models/fraud%2/ready").status_code == 404


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_polling_stops_when_the_requests_do(server):
    """After answering, the front waits --busy-poll-us (200 µs by default) for the next request with the
    CPU awake, then sleeps: a server whose client has stopped uses next to no CPU (a wait that never
    ended would use a whole CPU, 2 s of the 2 s below)."""
    assert "busy polling 200 µs" in server.output()
    body, _ = body_of(1, seed=9)
    with connect(server) as sock:
        for _ in range(200):  # one at a time: the front polls after each answer
            sock.sendall(infer_request(body))
            (status, _, answer), = read_answers(sock, 1)
            assert status == 200 and probabilities(answer).shape == (1,)
        before = cpu_seconds(server.process.pid)
        time.sleep(2)
        used = cpu_seconds(server.process.pid) - before
    assert used < 0.3, f"the idle server used {used:.2f} s of CPU in 2 s"


def test_busy_polling_can_be_turned_off_and_is_bounded(model_file, tmp_path):
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1", "--api-key", KEY, "--no-inference-logs",
                         "--busy-poll-us", "0"], tmp_path) as served:
        assert "no busy polling" in served.output()
        body, _ = body_of(1, seed=2)
        with connect(served) as sock:
            sock.sendall(infer_request(body).replace(b"/fraud/", f"/{model_file.stem}/".encode()))
            assert read_answers(sock, 1)[0][0] == 200
    refused = subprocess.run([sys.executable, "-m", "lakeloop.cli", "serve", "--onnx", str(model_file),
                              "--busy-poll-us", "-5"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--busy-poll-us" in refused.stderr
