"""Reading Prefect events back from the test API, as the UI and automations see them."""

from __future__ import annotations

import time

import httpx
from prefect.settings import PREFECT_API_URL


def prefect_events(name: str, resource: str, expected: int = 1, settle: float = 0.0, timeout: float = 30
                   ) -> list[dict]:
    """The `name` events about `resource`, once at least `expected` have arrived (within `timeout`);
    with `settle`, wait that much longer and read again, so extra (duplicate) events would show."""
    query = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource]}}, "limit": 50}

    def read() -> list[dict]:
        return httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=query).json()["events"]

    deadline, found = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        found = read()
        if len(found) >= expected:
            if settle:
                time.sleep(settle)
                return read()
            return found
        time.sleep(0.5)
    return found
