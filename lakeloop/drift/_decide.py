"""From a window's raw verdict to a decision: hysteresis (consecutive windows) and a cooldown."""

from __future__ import annotations

import datetime as dt


def decide(raw_status: str, previous: list[dict], confirm_windows: int, cooldown: dt.timedelta,
           now: dt.datetime) -> tuple[str, bool, str]:
    """(status, emit the drift event?, why).

    Args:
        raw_status: this window's verdict ("drift", "no drift", "no data").
        previous: earlier reports of the same model version, newest first (their `raw_status`,
            `event_emitted` and `window_end`).
        confirm_windows: drift must be seen in this many consecutive windows (1: at once).
        cooldown: after an event, no new one for this long (a retrain is under way).
    """
    if raw_status != "drift":
        return raw_status, False, "no feature crossed its threshold" if raw_status == "no drift" else "no rows"
    streak = 1
    for report in previous:
        if report.get("raw_status") != "drift":
            break
        streak += 1
    if streak < confirm_windows:
        return "drift (unconfirmed)", False, (f"drift in {streak} of the {confirm_windows} consecutive windows "
                                              "needed to confirm it")
    for report in previous:
        if report.get("event_emitted"):
            at = dt.datetime.fromisoformat(report["window_end"])
            if now - at < cooldown:
                return "drift (cooldown)", False, (f"drift already reported for the window ending {at:%Y-%m-%d %H:%M}"
                                                   f" UTC; cooldown {cooldown} not over")
            break
    return "drift", True, f"drift confirmed over {streak} consecutive window(s)"
