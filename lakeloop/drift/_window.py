"""Reading a time window of inference logs from lakeFS, and storing drift reports beside them.

The model server writes `<prefix>/<model>/date=YYYY-MM-DD/<HHMMSS>-....parquet` on the logs
branch; a window lists only the dates it spans and keeps the rows whose `served_at` falls in it.
Reports go to `drift/<model>/<window end>.json` (and PNG plots) on the same branch, one commit per
report, so the history of decisions is itself versioned and is what hysteresis and cooldown read.
"""

from __future__ import annotations

import datetime as dt
import io
import json

import lakefs
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lakeloop.data._lakefs import lakefs_errors


def _dates(start: dt.datetime, end: dt.datetime) -> list[str]:
    day, last, days = start.date(), end.date(), []
    while day <= last:
        days.append(day.isoformat())
        day += dt.timedelta(days=1)
    return days


def read_window(client: lakefs.Client, repository: str, branch: str, prefix: str, model: str,
                start: dt.datetime, end: dt.datetime) -> pa.Table | None:
    """The logged rows served in [start, end), or None when there are none (or no logs branch yet)."""
    ref = lakefs.Repository(repository, client=client).branch(branch)
    tables = []
    with lakefs_errors(client.config.host, f"reading inference logs of {model} in {repository}/{branch}"):
        try:
            paths = [o.path for day in _dates(start, end)
                     for o in ref.objects(prefix=f"{prefix}/{model}/date={day}/") if o.path.endswith(".parquet")]
        except lakefs.exceptions.NotFoundException:
            return None
        for path in paths:
            with ref.object(path).reader("rb") as reader:
                tables.append(pq.read_table(io.BytesIO(reader.read())))
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="default")
    served = table.column("served_at")
    low = pa.scalar(start.replace(tzinfo=None), type=served.type)
    high = pa.scalar(end.replace(tzinfo=None), type=served.type)
    table = table.filter(pc.and_(pc.greater_equal(served, low), pc.less(served, high)))
    return table if table.num_rows else None


def columns_of(table: pa.Table | None, names: list[str]) -> dict[str, pa.ChunkedArray]:
    """The named columns, as Arrow (what `Reference.compare` reads fastest); missing ones left out."""
    if table is None:
        return {}
    out = {}
    for name in names:
        if name in table.column_names:
            column = table.column(name)
            out[name] = column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
    return out


def report_path(model: str, at: dt.datetime) -> str:
    return f"drift/{model}/{at.strftime('%Y-%m-%dT%H%M%SZ')}.json"


def save_report(client: lakefs.Client, repository: str, branch: str, model: str, at: dt.datetime, report: dict,
                plots: dict[str, bytes]) -> str:
    """Commit the report (and its plots) to the logs branch (created from the default branch when no
    traffic was ever logged); returns the commit id."""
    path = report_path(model, at)
    repo = lakefs.Repository(repository, client=client)
    branch_ref = repo.branch(branch)
    with lakefs_errors(client.config.host, f"committing the drift report {path}"):
        branch_ref.create(repo.properties.default_branch, exist_ok=True)
        branch_ref.object(path).upload(json.dumps(report, indent=2), content_type="application/json")
        for name, png in plots.items():
            branch_ref.object(path.removesuffix(".json") + f"-{name}.png").upload(png, content_type="image/png")
        commit = branch_ref.commit(f"drift report for {model}: {report['status']}",
                                   metadata={"model": model, "status": report["status"],
                                             "event_emitted": str(report.get("event_emitted", False)).lower()})
        return commit.get_commit().id


def recent_reports(client: lakefs.Client, repository: str, branch: str, model: str, limit: int) -> list[dict]:
    """The last `limit` drift reports of `model`, newest first."""
    ref = lakefs.Repository(repository, client=client).branch(branch)
    with lakefs_errors(client.config.host, f"reading drift reports of {model}"):
        try:
            paths = sorted((o.path for o in ref.objects(prefix=f"drift/{model}/") if o.path.endswith(".json")),
                           reverse=True)[:limit]
        except lakefs.exceptions.NotFoundException:
            return []
        return [json.loads(ref.object(p).reader().read()) for p in paths]
