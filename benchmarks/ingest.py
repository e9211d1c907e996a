"""Ingest benchmark: validation speed, lakeFS transfer speed and peak memory, side by side.

For each size it prints, in one run:
- validation rows/s: pandera as lakeloop runs it (column groups on 2 threads), pandera on one
  thread, and a hand-written vectorised pandas check of the same rules (the baseline), with ratios;
- transfer MB/s through the embedded lakeFS server (upload as lakeloop streams it, and with the SDK's
  writer for reference; download with the SDK's reader) against a plain local file copy of the same
  parquet file (with and without fsync, since the server fsyncs);
- peak memory of the ingest path (read → validate → pseudonymise → parquet → upload) in a fresh
  process, against the frame's in-memory size.

Usage: python benchmarks/ingest.py [--rows 1000000 10000000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lakefs
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._fraud import (  # noqa: E402  # noqa: E402
    CATEGORIES,
    CHANNELS,
    COUNTRIES,
    EMAIL_RE,
    FRAUD,
    FREE_TEXT_PII_RE,
    RawTransactionsSchema,
    generate_transactions,
)
from lakeloop.data import pseudonymise, read_batch, upload_frame, upload_stream, validate_batch  # noqa: E402
from lakeloop.devstack import _proc  # noqa: E402
from lakeloop.devstack.lakefs import start_process  # noqa: E402


def hand_written_check(frame: pd.DataFrame) -> int:
    """The raw schema's rules written directly in vectorised pandas: returns the failing-row count."""
    f = frame
    ok = (
        f["transaction_id"].notna() & f["transaction_id"].str.len().between(1, 64)
        & ~f["transaction_id"].duplicated(keep=False)
        & f["event_time"].notna()
        & f["amount"].between(0, 50_000)
        & f["merchant_category"].isin(CATEGORIES) & f["country"].isin(COUNTRIES) & f["channel"].isin(CHANNELS)
        & f["customer_age"].between(18, 110) & f["account_age_days"].between(0, 40_000)
        & f["distance_from_home_km"].between(0, 20_000) & f["transactions_last_24h"].between(0, 1_000)
        & (f["merchant_note"].str.len().fillna(0) <= 200)
        & ~f["merchant_note"].str.contains(FREE_TEXT_PII_RE, regex=True, na=False)
        & f["is_fraud"].isin([0, 1])
        & f["customer_email"].str.match(f"^{EMAIL_RE}$")
        & f["card_number"].str.len().between(13, 19) & f["card_number"].str.isdigit()
    )
    return int((~ok).sum())


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_validation(frame: pd.DataFrame, repeat: int) -> dict:
    rows = len(frame)
    assert hand_written_check(frame) == 0 and validate_batch(frame, RawTransactionsSchema, "bench").passed
    t_hand = best_of(lambda: hand_written_check(frame), repeat)
    t_one = best_of(lambda: validate_batch(frame, RawTransactionsSchema, "bench", workers=1), repeat)
    t_par = best_of(lambda: validate_batch(frame, RawTransactionsSchema, "bench", workers=2), repeat)
    return {"hand_rows_s": rows / t_hand, "pandera_1t_rows_s": rows / t_one, "pandera_2t_rows_s": rows / t_par,
            "ratio_pandera_2t_vs_hand": t_par / t_hand, "ratio_pandera_1t_vs_hand": t_one / t_hand}


def start_lakefs(workdir: Path) -> tuple[lakefs.Client, object]:
    key_id, secret = "AKIABENCH", secrets.token_urlsafe(16)
    url, process = start_process(workdir / "lakefs", key_id, secret)
    return lakefs.Client(host=url, username=key_id, password=secret), process


def copy_fsync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def bench_transfer(client: lakefs.Client, parquet: Path, workdir: Path, repeat: int) -> dict:
    size = parquet.stat().st_size
    repo = lakefs.Repository(f"bench-{secrets.token_hex(4)}", client=client).create(
        storage_namespace=f"local://bench/{secrets.token_hex(4)}")
    branch = repo.branch("main")
    chunk = 8 << 20

    def upload() -> None:  # what lakeloop's ingest does: a 1 MiB-chunk stream from the file
        with open(parquet, "rb") as src:
            upload_stream(client, repo.id, "main", "bench/part.parquet", src)

    def upload_sdk_writer() -> None:  # the SDK's own writer, for reference
        with branch.object("bench/writer.parquet").writer("wb") as writer, open(parquet, "rb") as src:
            while block := src.read(chunk):
                writer.write(block)

    def download() -> None:
        with branch.object("bench/part.parquet").reader("rb") as reader, open(workdir / "down.parquet", "wb") as dst:
            while block := reader.read(chunk):
                dst.write(block)

    t_copy = best_of(lambda: shutil.copyfile(parquet, workdir / "copy.parquet"), repeat)
    t_copy_sync = best_of(lambda: copy_fsync(parquet, workdir / "copy.parquet"), repeat)
    t_up = best_of(upload, repeat)
    t_writer = best_of(upload_sdk_writer, repeat)
    t_down = best_of(download, repeat)
    assert (workdir / "down.parquet").stat().st_size == size
    mb = size / 1e6
    return {"file_mb": mb, "copy_mb_s": mb / t_copy, "copy_fsync_mb_s": mb / t_copy_sync,
            "upload_mb_s": mb / t_up, "sdk_writer_mb_s": mb / t_writer, "download_mb_s": mb / t_down,
            "ratio_upload_vs_copy_fsync": t_copy_sync / t_up, "ratio_download_vs_copy_fsync": t_copy_sync / t_down,
            "ratio_upload_vs_copy": t_copy / t_up, "ratio_download_vs_copy": t_copy / t_down}


def _peak_rss_kib() -> int:
    """This process's peak RSS (VmHWM: unlike ru_maxrss, it does not inherit the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _ingest_path_child(parquet: str, endpoint: str, key_id: str, secret: str, out: str) -> None:
    """Runs in a fresh process: the ingest path's own work, with its peak RSS measured."""
    base = _peak_rss_kib()
    frame = read_batch(parquet)
    frame_bytes = int(frame.memory_usage(deep=True).sum())
    report = validate_batch(frame, RawTransactionsSchema, parquet)
    safe = pseudonymise(frame, b"k" * 32, FRAUD.pii_columns)
    del frame
    client = lakefs.Client(host=endpoint, username=key_id, password=secret)
    repo = lakefs.Repository(f"mem-{secrets.token_hex(4)}", client=client).create(
        storage_namespace=f"local://mem/{secrets.token_hex(4)}")
    upload_frame(client, repo.id, "main", "x.parquet", safe)
    peak = _peak_rss_kib()
    Path(out).write_text(json.dumps({"frame_mb": frame_bytes / 2**20, "peak_extra_mb": (peak - base) / 1024,
                                     "passed": report.passed}))


def bench_memory(parquet: Path, client: lakefs.Client, workdir: Path) -> dict:
    out = workdir / "mem.json"
    code = "import sys, benchmarks.ingest as b; b._ingest_path_child(*sys.argv[1:])"  # cwd=ROOT
    subprocess.run([sys.executable, "-c", code, str(parquet), client.config.host.removesuffix("/api/v1"),
                    client.config.username, client.config.password, str(out)], check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["ratio_peak_vs_frame"] = result["peak_extra_mb"] / result["frame_mb"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="lakeloop-bench-") as tmp:
        workdir = Path(tmp)
        client, server = start_lakefs(workdir)
        try:
            for rows in args.rows:
                print(f"\n== {rows:,} rows ==", flush=True)
                frame = generate_transactions(rows, seed=rows % 9973)
                parquet = workdir / f"batch-{rows}.parquet"
                frame.to_parquet(parquet, index=False, compression="zstd")
                v = bench_validation(frame, args.repeat)
                del frame
                print(f"validation  hand-written {v['hand_rows_s'] / 1e6:6.2f} M rows/s (baseline)\n"
                      f"            pandera 2 threads {v['pandera_2t_rows_s'] / 1e6:6.2f} M rows/s "
                      f"= {v['ratio_pandera_2t_vs_hand']:.2f}x the baseline's time\n"
                      f"            pandera 1 thread  {v['pandera_1t_rows_s'] / 1e6:6.2f} M rows/s "
                      f"= {v['ratio_pandera_1t_vs_hand']:.2f}x the baseline's time", flush=True)
                t = bench_transfer(client, parquet, workdir, args.repeat)
                print(f"transfer    {t['file_mb']:.0f} MB parquet; copy {t['copy_mb_s']:.0f} MB/s, "
                      f"copy+fsync {t['copy_fsync_mb_s']:.0f} MB/s (baseline)\n"
                      f"            lakeFS upload {t['upload_mb_s']:.0f} MB/s = "
                      f"{t['ratio_upload_vs_copy_fsync']:.2f}x copy+fsync ({t['ratio_upload_vs_copy']:.2f}x copy); "
                      f"SDK writer {t['sdk_writer_mb_s']:.0f} MB/s\n"
                      f"            lakeFS download {t['download_mb_s']:.0f} MB/s = "
                      f"{t['ratio_download_vs_copy_fsync']:.2f}x copy+fsync ({t['ratio_download_vs_copy']:.2f}x copy)",
                      flush=True)
                m = bench_memory(parquet, client, workdir)
                print(f"memory      frame {m['frame_mb']:.0f} MiB; ingest path peak +{m['peak_extra_mb']:.0f} MiB "
                      f"= {m['ratio_peak_vs_frame']:.2f}x the frame", flush=True)
                results[rows] = {"validation": v, "transfer": t, "memory": m}
                parquet.unlink()
        finally:
            _proc.stop(server.pid)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
