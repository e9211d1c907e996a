"""lakeFS actions: `_lakefs_actions/*.yaml` webhook hooks on commit and merge.

As in lakeFS: an action file names the events it runs on (`pre-commit`, `post-commit`, `pre-merge`,
`post-merge`) and optionally the branches (glob patterns) it applies to; each `webhook` hook POSTs
lakeFS's JSON payload to `properties.url`. Header and query-parameter values may use
`{{ ENV.LAKEFSACTION_* }}` placeholders. A non-2xx answer, a timeout or an unreachable URL fails the
hook: a failed pre-* hook aborts the operation, a failed post-* hook is only logged.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import logging
import os
import re
from dataclasses import dataclass

import httpx
import yaml

from lakeloop.devstack.lakefs._store import ACTIONS_PREFIX, Entry, Store

log = logging.getLogger("lakeloop.lakefs.actions")
_ENV_RE = re.compile(r"\{\{\s*ENV\.(\w+)\s*\}\}")
_DURATION_RE = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
EVENTS = ("pre-commit", "post-commit", "pre-merge", "post-merge")


class HookFailed(Exception):
    """A pre-* hook failed; the message says which and why."""


@dataclass(frozen=True)
class Hook:
    action: str
    hook_id: str
    url: str
    headers: dict[str, str]
    query: dict[str, str]
    timeout: float


def _render(value: object) -> str:
    """Fill `{{ ENV.LAKEFSACTION_X }}` placeholders; other variables are never exposed."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if not name.startswith("LAKEFSACTION_"):
            return ""
        return os.environ.get(name, "")

    return _ENV_RE.sub(sub, str(value))


def _duration(text: object) -> float:
    match = _DURATION_RE.match(str(text or "").strip())
    if not text or not match or not any(match.groups()):
        return 60.0
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


def find_hooks(store: Store, entries: dict[str, Entry], event: str, branch: str) -> list[Hook]:
    """The webhook hooks that the action files among `entries` declare for this event and branch."""
    hooks: list[Hook] = []
    for path in sorted(p for p in entries if p.startswith(ACTIONS_PREFIX)):
        if not path.endswith((".yaml", ".yml")):
            continue
        try:
            spec = yaml.safe_load(store.blob_path(entries[path].checksum).read_bytes()) or {}
            triggers = spec.get("on") or spec.get(True) or {}  # YAML 1.1 reads a bare `on` as True
            if event not in triggers:
                continue
            patterns = (triggers.get(event) or {}).get("branches") or ["*"]
            if not any(fnmatch.fnmatchcase(branch, pattern) for pattern in patterns):
                continue
            for hook in spec.get("hooks") or []:
                if hook.get("type") != "webhook":
                    log.warning("action %s: hook %s has unsupported type %r", path, hook.get("id"),
                                hook.get("type"))
                    continue
                props = hook.get("properties") or {}
                hooks.append(Hook(
                    action=str(spec.get("name") or path), hook_id=str(hook.get("id")),
                    url=str(props["url"]),
                    headers={str(k): _render(v) for k, v in (props.get("headers") or {}).items()},
                    query={str(k): _render(v) for k, v in (props.get("query_params") or {}).items()},
                    timeout=_duration(props.get("timeout")),
                ))
        except (yaml.YAMLError, KeyError, AttributeError, TypeError) as exc:
            raise HookFailed(f"action file {path} is invalid: {exc}") from exc
    return hooks


def payload(event: str, hook: Hook, repo: str, branch: str, *, source_ref: str = "", commit_id: str = "",
            message: str = "", committer: str = "", metadata: dict[str, str] | None = None,
            merge_source: str = "") -> dict:
    """lakeFS's webhook payload; fields after hook_id are omitted when empty."""
    body: dict = {
        "event_type": event,
        "event_time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "action_name": hook.action,
        "hook_id": hook.hook_id,
        "repository_id": repo,
        "branch_id": branch,
        "source_ref": source_ref,
        "commit_id": commit_id,
        "commit_message": message,
        "committer": committer,
        "commit_metadata": metadata or {},
        "merge_source": merge_source,
    }
    head = ("event_type", "event_time", "action_name", "hook_id")
    return {k: v for k, v in body.items() if k in head or v}


async def run_hooks(hooks: list[Hook], make_payload, *, pre: bool) -> None:
    """Call each hook in order. A pre-* failure raises HookFailed; a post-* failure is logged."""
    async with httpx.AsyncClient() as client:
        for hook in hooks:
            try:
                response = await client.post(hook.url, json=make_payload(hook), headers=hook.headers,
                                             params=hook.query, timeout=hook.timeout)
                ok, why = response.is_success, f"answered {response.status_code}"
            except httpx.HTTPError as exc:
                ok, why = False, f"failed: {type(exc).__name__}"
            if ok:
                continue
            message = f"hook {hook.hook_id!r} of action {hook.action!r} {why}"
            if pre:
                raise HookFailed(message)
            log.warning("post hook failed (operation kept): %s", message)
