"""A tiny HTTP server on 127.0.0.1 for the tests' webhook targets and fake APIs."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# handle(path, headers, body) -> (status, JSON answer or None)
Handler = Callable[[str, dict[str, str], bytes], tuple[int, dict | None]]


class LoopbackServer:
    """Serves POSTs with `handle` on a free loopback port until `close()`."""

    def __init__(self, handle: Handler) -> None:
        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = handle(self.path, dict(self.headers), body)
                payload = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
