"""Training under torchrun: 2-process DDP matches 1 process, a killed run resumes to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from lakeloop.config import TrainingConfig
from lakeloop.data import pseudonymise
from lakeloop.errors import TrainingError
from lakeloop.modeling.features import FeatureSpec, split_of
from lakeloop.modeling.run import launch, prepare_run, record_lineage, torchrun_command
from lakeloop.project import resolve_project
from tests._examples import generate_transactions

COMMIT = "f" * 64
FRAUD = resolve_project("fraud")
# Tolerance of the DDP check: gradients are averaged by an all-reduce instead of one batch mean,
# so float32 rounding differs slightly; measured max weight difference 1.2e-7 after 3 epochs.
WEIGHT_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pseudonymise(generate_transactions(8_192, seed=12), b"k" * 32, FRAUD.pii_columns)


def _weights(workdir) -> dict[str, torch.Tensor]:
    return torch.load(workdir / "model.pt")


def test_split_is_stable_across_data_versions(frame):
    first = split_of(frame, "transaction_id")
    grown = pd.concat([generate_transactions(1_000, seed=99), frame])
    again = split_of(grown, "transaction_id")[1_000:]
    assert (first == again).all()
    assert 0.17 < np.mean(first == "test") < 0.23 and 0.07 < np.mean(first == "val") < 0.13


def test_feature_spec_maps_unseen_categories_to_the_reserved_index(frame):
    spec = FeatureSpec.fit(FRAUD, frame)
    odd = frame.head(3).assign(merchant_category=["casino", "grocery", "casino"])
    _, codes = spec.encode(odd)
    assert codes[:, 0].tolist()[0] == 0 and codes[1, 0] > 1  # 0: unseen, 1: missing
    assert FeatureSpec.from_json(spec.to_json()) == spec


def test_two_process_ddp_matches_one_process(frame, tmp_path):
    results, weights = {}, {}
    for devices in (1, 2):
        # 3e-3: the step the 1e-5 tolerance was set for (gloo's reduction order differs from one process's sum,
        # and a larger step grows that rounding faster)
        config = TrainingConfig(epochs=3, seed=3, devices=devices, learning_rate=3e-3,
                                work_root=str(tmp_path / f"w{devices}"))
        workdir = prepare_run(FRAUD, frame, COMMIT, config, {})
        results[devices] = launch(workdir, config)
        weights[devices] = _weights(workdir)
    assert results[2]["world_size"] == 2 and results[1]["world_size"] == 1
    for entry in results[1]["history"]:  # a whole loss curve: every epoch has both losses
        assert {"epoch", "train_loss", "val_loss"} <= set(entry)
    worst = max((weights[1][k] - weights[2][k]).abs().max().item() for k in weights[1])
    assert worst <= WEIGHT_TOLERANCE
    for metric, value in results[1]["test_metrics"].items():
        assert results[2]["test_metrics"][metric] == pytest.approx(value, abs=1e-4), metric


def test_killed_run_resumes_to_the_uninterrupted_result(frame, tmp_path):
    # enough epochs after the first checkpoint that the kill always lands mid-run, even on a busy machine
    config = TrainingConfig(epochs=20, seed=4, early_stopping_patience=0, work_root=str(tmp_path / "straight"))
    straight = launch(prepare_run(FRAUD, frame, COMMIT, config, {}), config)
    elsewhere = config.model_copy(update={"work_root": str(tmp_path / "again")})
    again = launch(prepare_run(FRAUD, frame, COMMIT, elsewhere, {}), elsewhere)
    assert again["test_metrics"] == straight["test_metrics"]  # same commit + config + seed: same metrics

    killed = config.model_copy(update={"work_root": str(tmp_path / "killed")})
    workdir = prepare_run(FRAUD, frame, COMMIT, killed, {})
    process = subprocess.Popen(torchrun_command(workdir, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "2"})
    deadline = time.monotonic() + 120
    while not (workdir / "checkpoints" / "epoch=1.ckpt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "training finished before it could be killed"
    # torchrun starts its ranks in sessions of their own: kill the whole tree, as a lost node would lose it
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    for member in tree:
        member.send_signal(signal.SIGKILL)
    process.wait()
    psutil.wait_procs(tree, timeout=30)
    assert not (workdir / "result.json").exists()
    resumed = launch(workdir, killed)
    assert resumed["resumed"] is True
    assert resumed["test_metrics"] == straight["test_metrics"]
    assert [h["epoch"] for h in resumed["history"]] == list(range(20))
    for key, tensor in _weights(workdir).items():
        assert torch.equal(tensor, _weights(prepare_run(FRAUD, frame, COMMIT, config, {}))[key]), key


def test_a_run_past_its_timeout_stops_every_rank(frame, tmp_path):
    config = TrainingConfig(epochs=200, seed=4, early_stopping_patience=0, work_root=str(tmp_path), devices=2)
    workdir = prepare_run(FRAUD, frame, COMMIT, config, {})
    with pytest.raises(TrainingError, match="ran past 8s; its checkpoints are kept"):
        launch(workdir, config, timeout=8)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(workdir) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []  # no rank trains on as an orphan


def test_too_little_data_is_a_clear_error(tmp_path):
    tiny = pseudonymise(generate_transactions(3, seed=1), b"k" * 32, FRAUD.pii_columns)
    with pytest.raises(TrainingError, match="too few to split"):
        prepare_run(FRAUD, tiny, COMMIT, TrainingConfig(work_root=str(tmp_path)), {})


def test_a_failing_run_reports_its_log(frame, tmp_path):
    config = TrainingConfig(epochs=1, work_root=str(tmp_path))
    workdir = prepare_run(FRAUD, frame, COMMIT, config, {})
    (workdir / "arrays.npz").write_bytes(b"not numpy")
    with pytest.raises(TrainingError, match=r"failed .*a re-run resumes"):
        launch(workdir, config)


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(frame, tmp_path):
    config = TrainingConfig(epochs=4, seed=6, work_root=str(tmp_path))
    workdir = prepare_run(FRAUD, frame, COMMIT, config, {})
    straight = launch(workdir, config)
    (workdir / "checkpoints" / "last.ckpt").write_bytes(b"cut off by a kill")  # a kill mid-write
    (workdir / "checkpoints" / "epoch=3.ckpt").unlink()
    again = launch(workdir, config)
    assert again["resumed"] and again["test_metrics"] == straight["test_metrics"]
    assert "skipping unreadable checkpoint last.ckpt" in (workdir / "train.log").read_text()


def test_two_runs_of_one_folder_at_once_never_corrupt_each_other(frame, tmp_path):
    """A triggered retrain and a manual train-model of the same commit and config share one run folder."""
    from concurrent.futures import ThreadPoolExecutor

    config = TrainingConfig(epochs=2, seed=8, work_root=str(tmp_path))
    with ThreadPoolExecutor(2) as pool:  # both prepare the (new) folder at once
        folders = list(pool.map(lambda _: prepare_run(FRAUD, frame, COMMIT, config, {}), range(2)))
    assert folders[0] == folders[1]
    workdir = folders[0]
    with np.load(workdir / "arrays.npz") as arrays:
        assert arrays["train_label"].shape[0] > 0  # one complete write, not two interleaved ones
    with ThreadPoolExecutor(2) as pool:  # and train it at once: the second waits, then resumes
        results = list(pool.map(lambda _: launch(workdir, config), range(2)))
    assert results[0]["test_metrics"] == results[1]["test_metrics"]
    assert sorted(r["resumed"] for r in results) == [False, True]
    assert (workdir / "result.json").exists()


def test_lineage_sections_written_at_once_all_survive(tmp_path):
    """Training and compression of two runs sharing a folder add their lineage sections at the same time
    (CI once saw one rename the other's temporary file away)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(4) as pool:
        list(pool.map(_add_sections, [(tmp_path, f"writer{w}") for w in range(4)]))
    lineage = json.loads((tmp_path / "lineage.json").read_text())
    assert sorted(lineage) == sorted(f"writer{w}-{i}" for w in range(4) for i in range(40))
    assert not list(tmp_path.glob("*.tmp"))


def _add_sections(job: tuple[Path, str]) -> None:
    folder, writer = job
    for i in range(40):
        record_lineage(folder, **{f"{writer}-{i}": {"step": i}})


def test_early_stopping_keeps_the_epoch_with_the_lowest_validation_loss(frame, tmp_path):
    # a step large enough that the validation loss turns up well before 40 epochs
    config = TrainingConfig(epochs=40, seed=5, learning_rate=0.05, early_stopping_patience=2,
                            work_root=str(tmp_path))
    result = launch(prepare_run(FRAUD, frame, COMMIT, config, {}), config)
    losses = {e["epoch"]: e["val_loss"] for e in result["history"]}
    assert result["epochs_run"] < 39  # stopped early
    assert result["best_epoch"] == min(losses, key=losses.get)
    assert max(losses) - result["best_epoch"] <= 2  # stopped `patience` epochs after the best
