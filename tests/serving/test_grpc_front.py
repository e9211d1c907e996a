"""lakeloop's HTTP/2 front for gRPC (`_front.c`, `lakeloop serve --grpc-port` on the default HTTP layer), at the
protocol level: a conformant HTTP/2 client (the `h2` library) and raw bytes, for what grpcio's clients never
send — tiny flow-control windows, compressed or misframed messages, streams past the limit, pings, resets,
slow calls, broken frames and header blocks — each answered as gRPC and HTTP/2 say, the server healthy and
every good call answered right after them. tritonclient's and KServe's clients are in test_grpc.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import httpx
import numpy as np
import psutil
import pytest

from lakeloop.devstack import _proc
from lakeloop.serving import _inference_pb2 as pb
from lakeloop.serving._protocol import to_binary
from tests.serving.conftest import answer_of, answers_over_grpc, lakeloop_serve, rows, run_concurrently

KEY = "front-key"
MAX_BODY = 256 * 1024
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc-front")
    port = _proc.free_port()
    args = ["--onnx", str(model_file), "--name", "fraud", "--workers", "1", "--api-key", KEY, "--grpc-port",
            str(port), "--max-body-bytes", str(MAX_BODY), "--body-timeout", "1", "--header-timeout", "1",
            "--no-inference-logs"]
    with lakeloop_serve(args, tmp) as served:
        served.grpc = ("127.0.0.1", port)
        yield served


def request_of(n: int = 2, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A serialized ModelInferRequest for `n` generated rows, and its batch."""
    batch = rows(n, seed)
    message = pb.ModelInferRequest(model_name="fraud", raw_input_contents=[to_binary(v) for v in batch.values()])
    for name, array in batch.items():
        message.inputs.add(name=name, datatype="BYTES" if array.dtype == object else "FP32", shape=list(array.shape))
    return message.SerializeToString(), batch


def framed(message: bytes, compressed: int = 0, declared: int | None = None) -> bytes:
    return struct.pack(">BI", compressed, len(message) if declared is None else declared) + message


class Client:
    """One HTTP/2 connection through the h2 library, read synchronously."""

    def __init__(self, address: tuple[str, int], window: int | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=5)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        if window is not None:
            self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.flush()
        self.events: list = []

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def start(self, path: str = INFER, content_type: str = "application/grpc", method: str = "POST",
              end: bool = False) -> int:
        stream = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream, [(":method", method), (":scheme", "http"), (":path", path),
                                      (":authority", "x"), ("content-type", content_type), ("te", "trailers"),
                                      ("authorization", f"Bearer {KEY}")], end_stream=end)
        self.flush()
        return stream

    def call(self, body: bytes, **kwargs) -> int:
        stream = self.start(**kwargs)
        self.h2.send_data(stream, body, end_stream=True)
        self.flush()
        return stream

    def read(self, until, timeout: float = 5.0) -> list:
        """Events until `until(events)` holds (or the connection ends, or `timeout`)."""
        deadline = time.monotonic() + timeout
        while not until(self.events) and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):  # give the window back as a real client does
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                self.events.append(event)
            self.flush()
        return self.events

    def answer(self, stream: int, timeout: float = 5.0) -> dict:
        """{"headers", "data", "trailers", "reset"} of one stream once it has ended."""
        def ended(events) -> bool:
            return any(getattr(e, "stream_id", None) == stream and isinstance(e, (h2.events.StreamEnded,
                       h2.events.StreamReset)) for e in events) or any(
                isinstance(e, h2.events.ConnectionTerminated) for e in events)
        out: dict = {"headers": {}, "data": b"", "trailers": {}, "reset": None}
        for event in self.read(ended, timeout):
            if getattr(event, "stream_id", None) != stream:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                out["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                out["data"] += event.data
            elif isinstance(event, h2.events.TrailersReceived):
                out["trailers"] = dict(event.headers)
            elif isinstance(event, h2.events.StreamReset):
                out["reset"] = event.error_code
        return out

    def close(self) -> None:
        self.sock.close()


def status_of(answer: dict) -> tuple[int, str]:
    """(grpc-status, grpc-message) from the trailers, or from a trailers-only answer's head."""
    fields = answer["trailers"] or answer["headers"]
    return int(fields.get("grpc-status", -1)), fields.get("grpc-message", "")


def probabilities(data: bytes) -> np.ndarray:
    assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == len(data) - 5
    response = pb.ModelInferResponse.FromString(data[5:])
    i = [o.name for o in response.outputs].index("probability")
    assert response.outputs[i].datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[i], "<f4")


def healthy(server, model_file) -> None:
    """The server answers a good gRPC call right (through tritonclient) and its HTTP probe."""
    answers_over_grpc(f"{server.grpc[0]}:{server.grpc[1]}", KEY, rows(3, seed=5), model_file)
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_a_call_through_a_tiny_window_arrives_whole_and_right(server, model_file):
    """A client window of 7 bytes: the answer's DATA goes out in 7-byte frames as WINDOW_UPDATEs come."""
    message, batch = request_of(40, seed=2)
    client = Client(server.grpc, window=7)
    try:
        answer = client.answer(client.call(framed(message)))
    finally:
        client.close()
    assert answer["headers"][":status"] == "200" and status_of(answer) == (0, "")
    assert np.allclose(probabilities(answer["data"]).ravel(), answer_of(model_file, batch).ravel(), rtol=1e-5)


def test_a_large_call_crosses_frames_and_windows(server, model_file):
    """~190 KB through tritonclient: the request spans a dozen DATA frames and more than the 64 KB window a
    client starts with, so it goes on only as the server's SETTINGS and WINDOW_UPDATEs allow."""
    batch = rows(600, seed=6)
    for name, array in batch.items():
        if array.dtype == object:  # long category strings (unknown to the model: its "other" bucket)
            batch[name] = np.array([f"{v}-{'x' * 100}-{i}" for i, v in enumerate(array.ravel())],
                                   dtype=object).reshape(array.shape)
    assert 150_000 < sum(len(to_binary(a)) for a in batch.values()) < MAX_BODY
    answers_over_grpc(f"{server.grpc[0]}:{server.grpc[1]}", KEY, batch, model_file)


def test_many_calls_on_one_connection_interleaved(server, model_file):
    """Twenty calls open at once on one connection, their DATA sent in reverse order: each answer is its own."""
    client = Client(server.grpc)
    try:
        calls = []
        for seed in range(20):
            message, batch = request_of(1 + seed % 5, seed=seed)
            calls.append((client.start(), message, batch))
        for stream, message, _ in reversed(calls):
            client.h2.send_data(stream, framed(message), end_stream=True)
        client.flush()
        for stream, _, batch in calls:
            answer = client.answer(stream)
            assert status_of(answer) == (0, "")
            assert np.allclose(probabilities(answer["data"]).ravel(), answer_of(model_file, batch).ravel(), rtol=1e-5)
    finally:
        client.close()


@pytest.mark.parametrize("case", ["compressed", "misframed", "no message", "oversized", "not protobuf",
                                  "unknown method"])
def test_calls_the_front_or_the_service_refuses_get_a_grpc_status_naming_why(server, model_file, case):
    message, _ = request_of(2)
    body, path, end = {
        "compressed": (framed(message, compressed=1), INFER, False),
        "misframed": (framed(message[:10], declared=100), INFER, False),
        "no message": (b"", INFER, True),
        "oversized": (framed(b"\x0a" * (MAX_BODY + 10)), INFER, False),
        "not protobuf": (framed(b"\xff\xff\xff\xff"), INFER, False),
        "unknown method": (framed(message), "/inference.GRPCInferenceService/Nope", False),
    }[case]
    code, words = {"compressed": (12, "uncompressed"), "misframed": (13, "declares 100 bytes and 10 follow"),
                   "no message": (13, "no request message"), "oversized": (8, "--max-body-bytes"),
                   "not protobuf": (3, "not a valid inference.ModelInferRequest"),
                   "unknown method": (12, "unknown method")}[case]
    client = Client(server.grpc)
    try:
        stream = client.start(path=path, end=end)
        if not end:
            _send(client, stream, body)
        answer = client.answer(stream)
    finally:
        client.close()
    got, detail = status_of(answer)
    assert got == code and words in detail, answer
    healthy(server, model_file)


def _send(client: Client, stream: int, body: bytes) -> None:
    """Send as the window allows; the server answers (and resets the stream) once the limit is passed."""
    client.read(lambda events: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events), 2)
    sent = 0
    while sent < len(body):
        room = min(client.h2.local_flow_control_window(stream), client.h2.max_outbound_frame_size, len(body) - sent)
        if room <= 0 or any(isinstance(e, (h2.events.StreamReset, h2.events.StreamEnded)) for e in client.events):
            return
        client.h2.send_data(stream, body[sent:sent + room], end_stream=sent + room == len(body))
        client.flush()
        sent += room


@pytest.mark.parametrize("case", ["wrong content-type", "GET"])
def test_requests_that_are_not_grpc_get_the_http_status(server, case):
    client = Client(server.grpc)
    try:
        if case == "GET":
            answer = client.answer(client.start(method="GET", end=True))
        else:
            answer = client.answer(client.call(b"{}", content_type="application/json"))
    finally:
        client.close()
    assert answer["headers"][":status"] == ("405" if case == "GET" else "415")


def test_streams_past_the_limit_are_refused_and_the_others_answered(server, model_file):
    """The front takes 100 streams at a time (SETTINGS_MAX_CONCURRENT_STREAMS): the 101st to 110th opened
    regardless are reset with REFUSED_STREAM; the first hundred all get their answers."""
    client = Client(server.grpc)  # it has not read the server's SETTINGS yet, so h2 lets it open 110 streams
    message, batch = request_of(2, seed=4)
    try:
        streams = [client.start() for _ in range(110)]
        for stream in streams[:100]:
            client.h2.send_data(stream, framed(message), end_stream=True)
        client.flush()
        refused = client.read(lambda events: sum(isinstance(e, h2.events.StreamReset) for e in events) >= 10)
        codes = {e.stream_id: e.error_code for e in refused if isinstance(e, h2.events.StreamReset)}
        assert set(codes) == set(streams[100:]) and set(codes.values()) == {7}, codes
        expected = answer_of(model_file, batch).ravel()
        for stream in streams[:100]:
            answer = client.answer(stream)
            assert status_of(answer) == (0, "") and np.allclose(probabilities(answer["data"]).ravel(), expected,
                                                                rtol=1e-5)
    finally:
        client.close()


def test_a_call_not_complete_in_time_gets_deadline_exceeded(server, model_file):
    message, _ = request_of(2)
    client = Client(server.grpc)
    try:
        stream = client.start()
        client.h2.send_data(stream, framed(message)[:20])  # and nothing more (--body-timeout 1)
        client.flush()
        answer = client.answer(stream, timeout=4)
    finally:
        client.close()
    got, detail = status_of(answer)
    assert got == 4 and "not complete within 1 s" in detail, answer
    healthy(server, model_file)


def test_an_answer_the_client_never_opens_its_window_to_is_dropped_in_time(server, model_file):
    """A client window of 0 that never grows: after --body-timeout the answer is dropped (RST_STREAM CANCEL)
    rather than held for ever."""
    message, _ = request_of(2)
    client = Client(server.grpc, window=0)
    try:
        stream = client.call(framed(message))
        events = client.read(lambda events: any(isinstance(e, h2.events.StreamReset) for e in events), 4)
    finally:
        client.close()
    assert [e.error_code for e in events if isinstance(e, h2.events.StreamReset)] == [8]
    assert not [e for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream]
    healthy(server, model_file)


def test_pings_are_answered_and_a_cancelled_call_leaves_the_connection_working(server, model_file):
    message, batch = request_of(2, seed=8)
    client = Client(server.grpc)
    try:
        client.h2.ping(b"lakeloop")
        client.flush()
        acks = client.read(lambda events: any(isinstance(e, h2.events.PingAckReceived) for e in events))
        assert [e.ping_data for e in acks if isinstance(e, h2.events.PingAckReceived)] == [b"lakeloop"]
        cancelled = client.start()
        client.h2.reset_stream(cancelled)
        client.flush()
        answer = client.answer(client.call(framed(message)))
        assert np.allclose(probabilities(answer["data"]).ravel(), answer_of(model_file, batch).ravel(), rtol=1e-5)
    finally:
        client.close()


def _goaway(address: tuple[str, int], data: bytes) -> tuple[int | None, bytes]:
    """Send raw bytes after a proper preface and SETTINGS; (the GOAWAY's error code, or None, all read)."""
    with socket.create_connection(address, timeout=3) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    at = 0
    while at + 9 <= len(got):
        length, kind = int.from_bytes(got[at:at + 3], "big"), got[at + 3]
        if kind == 7:
            return int.from_bytes(got[at + 13:at + 17], "big"), got
        at += 9 + length
    return None, got


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _connection_bytes(body: bytes, end: bool = True) -> bytes:
    """A whole connection's bytes: preface, SETTINGS, one call's HEADERS, its DATA frames (sent as if
    the server's larger window were already known)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x"),
                          ("content-type", "application/grpc"), ("authorization", f"Bearer {KEY}")])
    chunks = [body[i:i + 16384] for i in range(0, len(body), 16384)]
    return conn.data_to_send() + b"".join(_frame(0, int(end and i == len(chunks) - 1), 1, chunk)
                                          for i, chunk in enumerate(chunks))


def _client_for(stream: int = 1) -> h2.connection.H2Connection:
    """An h2 client whose state matches a connection sent as raw bytes with one call on `stream`."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"), (":path", INFER), (":authority", "x")])
    conn.data_to_send()
    return conn


def test_a_client_that_half_closes_after_its_call_still_gets_the_answer(server, model_file):
    """The call, then the client's FIN at once: the answer still comes whole before the server closes."""
    message, batch = request_of(2, seed=12)
    with socket.create_connection(server.grpc, timeout=5) as sock:
        sock.sendall(_connection_bytes(framed(message)))
        sock.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    events = _client_for().receive_data(got)
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    trailers = [dict(e.headers) for e in events if isinstance(e, h2.events.TrailersReceived)]
    assert trailers and trailers[0]["grpc-status"] == "0"
    assert np.allclose(probabilities(data).ravel(), answer_of(model_file, batch).ravel(), rtol=1e-5)


@pytest.mark.parametrize("case,code", [("bad header block", 9), ("DATA on stream 0", 1),
                                       ("frame over 16 KB", 6), ("CONTINUATION without HEADERS", 1),
                                       ("even stream id", 1), ("window overflow", 3)])
def test_protocol_errors_end_that_connection_with_goaway(server, model_file, case, code):
    data = {
        "bad header block": _frame(1, 0x5, 1, b"\xff\xff\xff\xff\x0f"),  # an index far past the tables
        "DATA on stream 0": _frame(0, 0, 0, b"x"),
        "frame over 16 KB": _frame(0, 0, 1, b"x" * 20000),
        "CONTINUATION without HEADERS": _frame(9, 4, 1, b"\x82"),
        "even stream id": _frame(1, 0x5, 2, b"\x83\x86\x84"),
        "window overflow": _frame(8, 0, 0, (0x7fffffff).to_bytes(4, "big")),
    }[case]
    got, _ = _goaway(server.grpc, data)
    assert got == code
    healthy(server, model_file)


@pytest.mark.parametrize("data", [b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n", bytes(range(256)) * 4])
def test_what_is_not_http2_is_closed(server, model_file, data):
    with socket.create_connection(server.grpc, timeout=3) as sock:
        sock.sendall(data)
        got = b""
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread: a reset
            while chunk := sock.recv(65536):  # the server's SETTINGS, then the close
                got += chunk
    assert b"HTTP/1.1" not in got
    healthy(server, model_file)


def test_thousands_of_hostile_grpc_connections_leave_it_healthy_and_every_good_call_answered(server, model_file):
    """Garbage, oversized, compressed, truncated, abandoned and good calls, interleaved from 16 clients."""
    host, port = server.grpc
    message, batch = request_of(3, seed=9)
    expected = answer_of(model_file, batch).ravel()

    kinds = {"good": _connection_bytes(framed(message)),
             "garbage": np.random.default_rng(1).integers(0, 256, 600, dtype=np.uint8).tobytes(),
             "oversized": _connection_bytes(framed(b"\x0a" * (MAX_BODY + 10)))[:MAX_BODY + 40000],
             "compressed": _connection_bytes(framed(message, compressed=1)),
             "truncated": _connection_bytes(framed(message), end=False)[:-20],
             "abandoned": _connection_bytes(framed(message))[:60]}
    plan = list(np.random.default_rng(2).permutation(["good"] * 1500 + ["garbage"] * 500 + ["oversized"] * 200 +
                                                     ["compressed"] * 300 + ["truncated"] * 300 +
                                                     ["abandoned"] * 200))
    process = psutil.Process(server.process.pid)
    rss_before = process.memory_info().rss
    outcome: dict[str, dict] = {k: {} for k in kinds}
    wrong: list = []

    async def one(kind: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(kinds[kind])
            await writer.drain()
            if kind in ("abandoned", "truncated"):
                return  # the client goes away mid-call
            conn = _client_for()
            status, data = None, b""
            while status is None:
                chunk = await asyncio.wait_for(reader.read(65536), 10)
                if not chunk:
                    status = "closed"
                    break
                for event in conn.receive_data(chunk):
                    if isinstance(event, h2.events.DataReceived):
                        data += event.data
                    elif isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                        fields = dict(event.headers)
                        if "grpc-status" in fields:
                            status = int(fields["grpc-status"])
                    elif isinstance(event, (h2.events.ConnectionTerminated, h2.events.StreamReset)):
                        status = status if status is not None else "reset"
            outcome[kind][status] = outcome[kind].get(status, 0) + 1
            if kind == "good" and (status != 0 or not np.allclose(probabilities(data).ravel(), expected, rtol=1e-5)):
                wrong.append((status, data[:80]))
        except (ConnectionError, TimeoutError, h2.exceptions.ProtocolError):
            outcome[kind]["error"] = outcome[kind].get("error", 0) + 1
        finally:
            writer.close()

    run_concurrently(plan, one, clients=16)
    assert outcome["good"] == {0: 1500} and not wrong, (outcome, wrong[:3])
    assert set(outcome["compressed"]) == {12} and set(outcome["oversized"]) <= {8, "reset", "error"}
    assert set(outcome["garbage"]) <= {"closed", "error"}
    healthy(server, model_file)
    grown = process.memory_info().rss - rss_before
    assert grown < 100 * 1024 * 1024, f"the server grew by {grown / 1e6:.0f} MB"
