"""The model server on lakeloop's compiled front (`_front.c`), the default where it is built.

Why: under uvicorn, the HTTP stack's own Python work (protocol callbacks, the ASGI scope, a task and two
`send` calls per request) took as long as parsing the request and running the model together. The
front does the connection work in C — accept, read, parse the head and body, the limits, write — and
calls the app once per complete request (`app.handle`), inside the same asyncio loop that runs the
background work. Its limits are uvicorn's under lakeloop (`lakeloop._uvicorn` and the app's body
bounds): 431 for a head over `max_header_bytes`, 408 for a head or body not complete in time, 413 for a
body over `max_body_bytes` (from its Content-Length, or as a chunked body passes it), 400 for a
malformed or smuggling request, idle keep-alive connections closed after `keep_alive_s`. V2 over gRPC
runs on a second listener of the same front that speaks HTTP/2 (`_grpc.front_handler`), with the same
limits as gRPC statuses.

Several workers share one listening socket, each a process of its own (like uvicorn's `--workers`): a
worker that dies is started again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import signal
import socket
import time

from lakeloop.errors import ConfigError

log = logging.getLogger("lakeloop.serving")
KEEP_ALIVE_S = 30.0
GRACE_S = 10.0  # how long requests in flight may take to finish at shutdown

try:
    from lakeloop.serving._front import Front
except ImportError:  # not built here (no C compiler at install time, or not Linux)
    Front = None


def available() -> bool:
    return Front is not None


def listen(host: str, port: int, flag: str = "--port") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server on that port? "
                          f"choose another {flag})") from None
    sock.setblocking(False)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(app, sock: socket.socket, max_header_bytes: int, header_timeout: float,
          grpc_sock: socket.socket | None = None, busy_poll_us: int = 0) -> None:
    """Run `app` (from `create_app`) on `sock`, and V2 over gRPC on `grpc_sock` if given, until SIGINT or
    SIGTERM, then finish what is in flight. `busy_poll_us`: after answering, wait this long for the next
    request awake instead of sleeping at once (the front's `spin`)."""
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        runner.run(_serve(app, sock, max_header_bytes, header_timeout, grpc_sock, busy_poll_us))


async def _serve(app, sock: socket.socket, max_header_bytes: int, header_timeout: float,
                 grpc_sock: socket.socket | None, busy_poll_us: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await app.startup()
    except Exception as exc:  # what uvicorn's lifespan does: say why, exit 3
        log.error("start-up failed: %s", exc)
        raise SystemExit(3) from None
    limits = app.limits
    fronts = [Front(sock.fileno(), app.handle, app.early, max_header_bytes, limits.max_body_bytes, header_timeout,
                    limits.body_timeout_s, KEEP_ALIVE_S, busy_poll_us=busy_poll_us)]
    host, port = sock.getsockname()[:2]
    log.info("serving V2 on http://%s:%d (lakeloop's HTTP front, process %d)", host, port, os.getpid())
    if grpc_sock is not None:
        from lakeloop.serving import _grpc

        fronts.append(Front(grpc_sock.fileno(), _grpc.front_handler(app.server), None, max_header_bytes,
                            limits.max_body_bytes, header_timeout, limits.body_timeout_s, KEEP_ALIVE_S, http2=True,
                            busy_poll_us=busy_poll_us))
        log.info("serving V2 over gRPC on %s:%d (lakeloop's HTTP/2 front)", *grpc_sock.getsockname()[:2])
    for front in fronts:
        loop.add_reader(front.fileno(), front.poll)

    def sweep() -> None:
        for front in fronts:
            front.sweep()
        timer[0] = loop.call_later(0.1, sweep)

    timer = [loop.call_later(0.1, sweep)]
    try:
        await stop.wait()
    finally:
        log.info("shutting down: no new connections; finishing %d request(s) in flight",
                 sum(front.busy for front in fronts))
        for front in fronts:
            front.stop_listening()
        deadline = time.monotonic() + GRACE_S
        while (any(front.busy for front in fronts) or app.pending) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        timer[0].cancel()
        for front in fronts:
            loop.remove_reader(front.fileno())
            front.close()
        await app.shutdown()


def _worker(settings_json: str, sock: socket.socket, max_header_bytes: int, header_timeout: float,
            grpc_sock: socket.socket | None) -> None:
    from lakeloop.serving._app import create_app
    from lakeloop.serving._main import LOG_FORMAT, ServeSettings, build

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = ServeSettings.model_validate(json.loads(settings_json))
    serve(create_app(build(settings)), sock, max_header_bytes, header_timeout, grpc_sock, settings.busy_poll_us)


def supervise(settings_json: str, sock: socket.socket, workers: int, max_header_bytes: int,
              header_timeout: float, grpc_sock: socket.socket | None = None) -> None:
    """Run `workers` processes on one socket until SIGINT/SIGTERM; start again any that dies."""
    context = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> multiprocessing.Process:
        process = context.Process(target=_worker, daemon=False,
                                  args=(settings_json, sock, max_header_bytes, header_timeout, grpc_sock))
        process.start()
        return process

    def on_signal(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    processes = [start() for _ in range(workers)]
    log.info("serving with %d worker processes: %s", workers, ", ".join(str(p.pid) for p in processes))
    try:
        while not stopping:
            time.sleep(0.2)
            for i, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error("worker %d exited with %s: starting another", process.pid, process.exitcode)
                    processes[i] = start()
    finally:
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S + 5
        for process in processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
