"""`ingest-data` through `flow(...)`: publish good batches, quarantine bad ones, never move main wrongly."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import lakefs
import pandas as pd
import pytest

from flows.ingest import ingest_data
from lakeloop.config import DataConfig
from lakeloop.data._wap import data_path, report_paths
from lakeloop.errors import DataValidationError
from lakeloop.project import project_documents, resolve_project
from tasks.data import pull
from tests._examples import FRAUD_DIR, generate_transactions

pytestmark = pytest.mark.lakefs

FRAUD = resolve_project("fraud")


@pytest.fixture
def data(data_blocks, lakefs_server) -> DataConfig:
    name = f"d-{uuid.uuid4().hex[:10]}"
    return DataConfig(repository=name, storage_namespace=f"{lakefs_server.namespace_prefix}/{name}")


def _repo(server, config: DataConfig) -> lakefs.Repository:
    return lakefs.Repository(config.repository, client=server.client())


def _main_head(server, config: DataConfig) -> str | None:
    try:
        return _repo(server, config).branch("main").get_commit().id
    except lakefs.exceptions.NotFoundException:
        return None


def test_good_batch_is_published_with_provenance(tmp_path, data, lakefs_server):
    path = tmp_path / "batch.parquet"
    frame = generate_transactions(2_000, seed=11)
    frame.to_parquet(path)
    result = ingest_data(str(path), project=FRAUD_DIR, data=data)
    assert result.rows == 2_000 and not result.already_published
    repo = _repo(lakefs_server, data)
    head = repo.branch("main").get_commit()
    assert head.id == result.commit_id
    merged_from = repo.commit(head.parents[1]).get_commit()
    assert merged_from.metadata["rows"] == "2000"
    assert merged_from.metadata["source"] == str(path)
    assert merged_from.metadata["project"] == "fraud"  # the project file and schema it was checked with
    documents = project_documents(FRAUD)
    assert merged_from.metadata["project_sha256"] == documents["project"]["sha256"]
    assert merged_from.metadata["schema_sha256"] == documents["schema"]["sha256"]
    assert len(merged_from.metadata["content_sha256"]) == 64 and merged_from.metadata["flow_run_id"]
    assert [b.id for b in repo.branches()] == ["main"]  # the ingest branch is gone

    commit_id, published = pull.fn(data, "main", FRAUD)
    assert commit_id == result.commit_id and len(published) == 2_000
    # the stages of a run pull the same commit: its parts come from lakeFS once, then from the cache
    cached = list((Path(os.environ["LAKELOOP_STATE_DIR"]) / "cache" / data.repository / commit_id).rglob("*.parquet"))
    assert len(cached) == 1
    pd.DataFrame(published.head(3)).to_parquet(cached[0])  # what the second pull returns shows where it read
    assert len(pull.fn(data, commit_id, FRAUD)[1]) == 3
    cached[0].unlink()
    assert len(pull.fn(data, commit_id, FRAUD)[1]) == 2_000  # a missing part is fetched again
    assert published["customer_email"].str.match(r"^pii_[0-9a-f]{32}$").all()
    assert not published["card_number"].isin(frame["card_number"]).any()  # no raw PII on main
    assert (published["amount"].to_numpy() == frame["amount"].to_numpy()).all()

    again = ingest_data(str(path), project=FRAUD_DIR, data=data)  # the same file twice: recognised, nothing new
    assert again.already_published and repo.branch("main").get_commit().id == head.id


def test_csv_batches_and_pull_by_tag_and_commit(tmp_path, data, lakefs_server):
    first, second = tmp_path / "a.csv", tmp_path / "b.parquet"
    generate_transactions(500, seed=1).to_csv(first, index=False)
    generate_transactions(300, seed=2).to_parquet(second)
    one = ingest_data(str(first), project=FRAUD_DIR, data=data)
    _repo(lakefs_server, data).tag("v1").create(one.commit_id)
    two = ingest_data(str(second), project=FRAUD_DIR, data=data)
    assert len(pull.fn(data, "v1", FRAUD)[1]) == 500
    assert len(pull.fn(data, one.commit_id[:16], FRAUD)[1]) == 500
    commit_id, both = pull.fn(data, None, FRAUD)
    assert commit_id == two.commit_id and len(both) == 800


def _drop(column: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    return lambda f: f.drop(columns=[column])


def _set(column: str, rows: slice, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({column: object})
        frame.loc[frame.index[rows], column] = value
        return frame

    return change


BAD_BATCHES = {
    "missing column": (_drop("country"), "missing column 'country'"),
    "label missing": (_drop("is_fraud"), "missing column 'is_fraud' (the label column)"),
    "extra column": (lambda f: f.assign(notes2="x"), "unexpected column 'notes2'"),
    "uncoercible type": (_set("amount", slice(3, 5), "twelve"), "column 'amount' failed coerce_dtype"),
    "nulls": (_set("country", slice(0, 4), None), "column 'country' failed not_nullable in 4 row(s)"),
    "out of range": (_set("customer_age", slice(10, 13), 7), "column 'customer_age' failed "
                     "greater_than_or_equal_to(18) in 3 row(s) (rows 10, 11, 12"),
    "unknown category": (_set("merchant_category", slice(0, 1), "casino"), "column 'merchant_category' "
                         "failed isin"),
    "duplicate ids": (lambda f: f.assign(transaction_id=f["transaction_id"].where(f.index != 5,
                                                                                 f["transaction_id"][4])),
                      "column 'transaction_id' failed field_uniqueness in 2 row(s)"),
    "PII in free text": (_set("merchant_note", slice(7, 8), "call jane.doe@example.org"),
                         "column 'merchant_note' failed no_pii_in_free_text in 1 row(s) (rows 7; "
                         "values <redacted>)"),
    "empty batch": (lambda f: f.iloc[0:0], "the batch has no rows"),
}


@pytest.mark.parametrize("case", list(BAD_BATCHES))
def test_bad_batch_is_quarantined_and_main_does_not_move(case, tmp_path, data, lakefs_server):
    mutate, expected = BAD_BATCHES[case]
    frame = mutate(generate_transactions(200, seed=5))
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path) if "coercible" not in case else frame.to_csv(path := tmp_path / "bad.csv",
                                                                            index=False)
    state = ingest_data(str(path), project=FRAUD_DIR, data=data, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError) as info:
        state.result()
    message = str(info.value)
    assert expected in message, message
    assert message.count("\n") == 0 and "fix the batch and ingest it again" in message
    assert "jane.doe" not in message
    repo = _repo(lakefs_server, data)
    assert [c.message for c in repo.branch("main").log()] == ["Repository created"]
    quarantine = [b.id for b in repo.branches() if b.id.startswith("quarantine-")]
    assert len(quarantine) == 1 and not [b for b in repo.branches() if b.id.startswith("ingest-")]
    batch = quarantine[0].removeprefix("quarantine-")
    markdown, as_json = report_paths(data_path(data.prefix, batch))
    report = json.loads(repo.branch(quarantine[0]).object(as_json).reader().read())
    assert report["passed"] is False
    assert message == f"{report['summary']}; report on lakeFS branch {data.repository}/{quarantine[0]}"
    assert "FAILED" in repo.branch(quarantine[0]).object(markdown).reader(mode="r").read()
    if case == "PII in free text":
        kept = pd.read_parquet(repo.branch(quarantine[0]).object(data_path(data.prefix, batch)).reader())
        assert "jane.doe@example.org" not in " ".join(kept["merchant_note"])  # redacted even there


@pytest.mark.parametrize("content,name,expected", [
    (b"PAR1" + b"\0" * 64, "cut.parquet", "truncated or corrupt parquet file"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 32, "picture.png", "neither parquet nor CSV"),
])
def test_unreadable_files_are_refused_clearly(content, name, expected, tmp_path, data, lakefs_server):
    path = tmp_path / name
    path.write_bytes(content)
    state = ingest_data(str(path), project=FRAUD_DIR, data=data, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=expected):
        state.result()
    assert [c.message for c in _repo(lakefs_server, data).branch("main").log()] == ["Repository created"]


def test_truncated_real_parquet_is_refused(tmp_path, data, lakefs_server):
    good = tmp_path / "good.parquet"
    generate_transactions(500, seed=9).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    state = ingest_data(str(cut), project=FRAUD_DIR, data=data, return_state=True)
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=str(cut)):
        state.result()
    assert _main_head(lakefs_server, data) == _repo(lakefs_server, data).branch("main").log().__next__().id


def test_publishing_emits_a_prefect_event(tmp_path, data, lakefs_server):

    from tests._events import prefect_events

    path = tmp_path / "evented.parquet"
    generate_transactions(100, seed=77).to_parquet(path)
    result = ingest_data(str(path), project=FRAUD_DIR, data=data)
    events = prefect_events("lakeloop.data.published", f"lakefs.{data.repository}.main")
    assert len(events) == 1
    assert events[0]["payload"]["commit_id"] == result.commit_id
    assert events[0]["payload"]["rows"] == 100
    assert events[0]["resource"]["lakefs.repository"] == data.repository
