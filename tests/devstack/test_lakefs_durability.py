"""The embedded server's own storage: restarts lose nothing, crashes leave nothing half-written."""

from __future__ import annotations

import base64
import http.client
import secrets
import subprocess
import sys
import time

import lakefs
import pytest

from lakeloop.devstack import _proc
from tests.conftest import LakeFSEndpoint, start_embedded_lakefs

pytestmark = pytest.mark.lakefs


@pytest.fixture
def private_server(tmp_path):
    """A server of this test's own, so it can be killed and restarted."""
    key_id, secret = "AKIAPRIVATE", secrets.token_urlsafe(16)
    data_dir = tmp_path / "data"
    port = _proc.free_port()
    endpoint, process = start_embedded_lakefs(data_dir, key_id, secret, port)
    server = LakeFSEndpoint(endpoint, key_id, secret, "local://private", True, data_dir, process)
    yield server
    _proc.stop(server.process.pid)


def _restart(server: LakeFSEndpoint, kill: bool = False) -> None:
    if kill:
        server.process.kill()
        server.process.wait()
    else:
        _proc.stop(server.process.pid)
    port = int(server.endpoint.rsplit(":", 1)[1])
    _, server.process = start_embedded_lakefs(server.data_dir, server.access_key_id,
                                              server.secret_access_key, port)


def test_restart_loses_nothing(private_server):
    repo = private_server.new_repo()
    main = repo.branch("main")
    main.object("committed.txt").upload("c")
    commit = main.commit("keep me", metadata={"n": "1"}).get_commit()
    main.object("staged.txt").upload("s")
    repo.tag("t1").create(main)
    _restart(private_server)
    client = private_server.client()
    again = lakefs.Repository(repo.id, client=client)
    assert again.branch("main").get_commit().id == commit.id
    assert again.branch("main").object("committed.txt").reader().read() == b"c"
    assert again.branch("main").object("staged.txt").reader().read() == b"s"  # staging survives too
    assert again.tag("t1").get_commit().id == commit.id


def test_crash_mid_upload_leaves_no_object(private_server):
    repo = private_server.new_repo()
    host, port = private_server.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    auth = base64.b64encode(f"{private_server.access_key_id}:{private_server.secret_access_key}".encode())
    conn.putrequest("POST", f"/api/v1/repositories/{repo.id}/branches/main/objects?path=big.bin")
    conn.putheader("Authorization", f"Basic {auth.decode()}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"z" * (1 << 20)
    for _ in range(8):  # 8 MiB sent, the upload never finishes
        conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    time.sleep(0.3)
    tmp_files = list((private_server.data_dir / "tmp").iterdir())
    assert tmp_files, "the upload should be streaming into tmp/"
    _restart(private_server, kill=True)  # SIGKILL: no clean-up code runs
    conn.close()
    again = lakefs.Repository(repo.id, client=private_server.client())
    assert not again.branch("main").object("big.bin").exists()
    assert list(again.branch("main").uncommitted()) == []
    assert list((private_server.data_dir / "tmp").iterdir()) == []


def test_upload_streams_to_disk_not_memory(private_server):
    """A 256 MiB upload must not grow the server's memory by anything like 256 MiB."""
    import psutil

    repo = private_server.new_repo()
    server = psutil.Process(private_server.process.pid)
    before = server.memory_info().rss
    host, port = private_server.endpoint.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    auth = base64.b64encode(f"{private_server.access_key_id}:{private_server.secret_access_key}".encode())

    def body():
        chunk = b"m" * (1 << 20)
        for _ in range(256):
            yield chunk

    conn.request("POST", f"/api/v1/repositories/{repo.id}/branches/main/objects?path=huge.bin", body(),
                 headers={"Authorization": f"Basic {auth.decode()}"}, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 201, response.read()
    grown = server.memory_info().rss - before
    assert grown < 64 * (1 << 20), f"server memory grew by {grown / 2**20:.0f} MiB for a 256 MiB upload"
    assert repo.branch("main").object("huge.bin").stat().size_bytes == 256 * (1 << 20)


def test_cli_refuses_to_start_without_credentials(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lakeloop.cli", "dev", "lakefs", "--data-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "LAKEFS_ACCESS_KEY_ID and LAKEFS_SECRET_ACCESS_KEY must be set" in result.stderr


def test_kill_during_commits_and_merges_leaves_consistent_state(private_server):
    """SIGKILL the server while a writer commits and merges in a loop: after a restart every branch
    points at a complete commit whose tree is fully there, and no half-applied staging remains."""
    import sqlite3
    import threading

    repo = private_server.new_repo()
    stop = threading.Event()

    def writer() -> None:
        client = private_server.client()
        r = lakefs.Repository(repo.id, client=client)
        i = 0
        while not stop.is_set():
            try:
                b = r.branch(f"w{i}").create("main")
                for j in range(5):
                    b.object(f"d/{i}-{j}.txt").upload(f"{i}-{j}")
                b.commit(f"c{i}")
                b.merge_into(r.branch("main"))
                i += 1
            except Exception:
                return

    thread = threading.Thread(target=writer)
    thread.start()
    time.sleep(1.5)
    private_server.process.kill()
    private_server.process.wait()
    stop.set()
    thread.join(timeout=30)
    _restart(private_server)

    db = sqlite3.connect(private_server.data_dir / "metadata.db")
    heads = db.execute("SELECT name, commit_id FROM branches WHERE repo=?", (repo.id,)).fetchall()
    assert heads
    for _, commit_id in heads:
        tree = db.execute("SELECT meta_range_id FROM commits WHERE repo=? AND id=?", (repo.id, commit_id)).fetchone()
        assert tree is not None
        if tree[0]:
            assert db.execute("SELECT 1 FROM trees WHERE tree_id=?", (tree[0],)).fetchone()
    for (checksum,) in db.execute("SELECT checksum FROM tree_entries UNION SELECT checksum FROM staging "
                                  "WHERE checksum IS NOT NULL"):
        assert (private_server.data_dir / "blobs" / checksum[:2] / checksum[2:]).exists()
    main = lakefs.Repository(repo.id, client=private_server.client()).branch("main")
    merged = [c for c in main.log() if c.message.startswith("Merge")]
    for obj in main.objects(prefix="d/"):  # every object main shows can be read in full
        assert obj.path.endswith(".txt") and main.object(obj.path).reader().read()
    assert merged, "the writer should have merged at least once before the kill"
