"""Process plumbing for the embedded stack: free ports, health waits, start and stop by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import psutil

from lakeloop.errors import DevStackError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_error(host: str, port: int) -> OSError | None:
    """Why `port` on `host` cannot be listened on now (None if it can), probed as the servers bind."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0,
               process: subprocess.Popen | None = None, log_file: Path | None = None) -> None:
    """Poll `check` until it is true; fail with the process's log tail if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DevStackError(f"{what} exited with code {process.returncode} before it was ready"
                                f"{_tail(log_file)}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.1)
    raise DevStackError(f"{what} was not ready after {timeout:.0f}s{_tail(log_file)}")


def http_ok(url: str, **kwargs) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=2, **kwargs).status_code < 300


def _tail(log_file: Path | None, lines: int = 15) -> str:
    if log_file is None or not log_file.exists():
        return ""
    text = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f"; last lines of {log_file}:\n" + "\n".join(text)


def start(cmd: Sequence[str], log_file: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a detached process (its own session) writing to log_file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(pid: int, timeout: float = 10.0) -> bool:
    """Stop pid, the process group it leads, and every descendant: SIGTERM, then SIGKILL. True if
    something was stopped.

    Descendants that left the group are stopped too: a Prefect worker starts each flow run in its own
    session, and torchrun each rank.
    """
    if not alive(pid):
        return False
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        tree = []
    _stop_group(pid, timeout)  # a no-op unless pid leads a group (the stack's services do)
    for member in tree:
        try:
            member.terminate()
        except psutil.Error:
            continue
    _, remaining = psutil.wait_procs(tree, timeout=timeout)
    for child in remaining:
        with contextlib.suppress(psutil.Error):
            child.kill()
    return True


def _stop_group(pid: int, timeout: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waited, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                waited = 0 if alive(pid) else pid
            if waited == pid or not alive(pid):
                return
            time.sleep(0.05)
