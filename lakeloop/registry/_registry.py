"""The model registry, stored in lakeFS and signed with a Vault transit key.

Layout of the registry repository (branch `main`):

    models/<name>/v<k>/<files>            the ONNX file(s), the checkpoint, ...
    models/<name>/v<k>/manifest.json      lineage, metrics, compression table, sha256 of every file
    models/<name>/v<k>/manifest.sig       the Vault transit signature of manifest.json
    models/<name>/aliases/<alias>.json    {"version": k, ...}: its commit history is the promotion record

A version is registered in one lakeFS commit; an alias moves in one commit (metadata: who, why).
Loading a version downloads its files, checks each sha256 against the manifest and the manifest's
signature against Vault, and refuses anything that does not match.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import lakefs

from lakeloop.data._lakefs import lakefs_errors, upload_stream
from lakeloop.errors import MergeConflictError, RegistryError
from lakeloop.secrets import MODEL_SIGNING_KEY, VaultClient

ALIASES = ("production", "staging", "previous")
MANIFEST, SIGNATURE = "manifest.json", "manifest.sig"


class Signer(Protocol):
    def sign(self, payload: bytes) -> str: ...

    def verify(self, payload: bytes, signature: str) -> bool: ...


class VaultSigner:
    """Signs and verifies with a Vault transit key (ed25519 by default in `lakeloop dev up`)."""

    def __init__(self, vault: VaultClient, key: str = MODEL_SIGNING_KEY) -> None:
        self.vault, self.key = vault, key

    def _b64(self, payload: bytes) -> str:
        return base64.b64encode(payload).decode()

    def sign(self, payload: bytes) -> str:
        with self.vault._errors(f"signing with transit key {self.key}"):
            answer = self.vault.hvac.secrets.transit.sign_data(self.key, hash_input=self._b64(payload),
                                                               mount_point=self.vault.settings.transit_mount)
        return answer["data"]["signature"]

    def verify(self, payload: bytes, signature: str) -> bool:
        with self.vault._errors(f"verifying with transit key {self.key}"):
            answer = self.vault.hvac.secrets.transit.verify_signed_data(
                self.key, hash_input=self._b64(payload), signature=signature,
                mount_point=self.vault.settings.transit_mount)
        return bool(answer["data"]["valid"])


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    commit_id: str
    manifest: dict


def canonical(manifest: Mapping) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


class Registry:
    """Model versions and aliases in a lakeFS repository.

    Args:
        client: lakeFS client (keys from Vault via the LakeFSConnection block).
        repository: the registry repository (created on first registration).
        signer: signs manifests on registration and verifies them on load.
        storage_namespace: used if the repository must be created.
    """

    def __init__(self, client: lakefs.Client, repository: str, signer: Signer,
                 storage_namespace: str | None = None) -> None:
        self.client, self.repository, self.signer = client, repository, signer
        self.namespace = storage_namespace or f"local://lakeloop/{repository}"
        self._repo = lakefs.Repository(repository, client=client)

    def _host(self) -> str:
        return self.client.config.host

    def _main(self) -> lakefs.Branch:
        return self._repo.branch("main")

    # -- registration --------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The names of the registered models (none if the registry does not exist yet)."""
        with lakefs_errors(self._host(), "listing the registered models"):
            try:
                prefixes = [o.path for o in self._main().objects(prefix="models/", delimiter="/")]
            except lakefs.exceptions.NotFoundException:
                return []
        return sorted(p.removeprefix("models/").rstrip("/") for p in prefixes if p.endswith("/"))

    def versions(self, name: str) -> list[int]:
        with lakefs_errors(self._host(), f"listing versions of {name}"):
            try:
                prefixes = [o.path for o in self._main().objects(prefix=f"models/{name}/v", delimiter="/")]
            except lakefs.exceptions.NotFoundException:
                return []
        return sorted(int(p.rstrip("/").rsplit("/v", 1)[1]) for p in prefixes if p.rstrip("/")[-1].isdigit())

    def register(self, name: str, files: Mapping[str, Path], details: Mapping, actor: str) -> ModelVersion:
        """Upload the files, write and sign the manifest, commit: one commit per version, merged into main.

        Safe to run concurrently (a triggered retrain and a manual one): each registration claims its version
        number by creating the branch `register-<name>-v<N>` (creation is atomic: a second claimant gets a
        conflict and takes the next number), writes only on that branch and merges it, so no run's files
        land in another's version or commit.
        """
        if not files:
            raise RegistryError(f"registering {name}: no files given")
        with lakefs_errors(self._host(), f"opening the registry {self.repository}"):
            self._repo.create(storage_namespace=self.namespace, default_branch="main", exist_ok=True)
        version, branch = self._claim(name)
        try:
            prefix = f"models/{name}/v{version}"
            entries = {}
            with lakefs_errors(self._host(), f"uploading {name} v{version}"):
                for rel, path in sorted(files.items()):
                    with open(path, "rb") as source:
                        size, sha = upload_stream(self.client, self.repository, branch.id, f"{prefix}/{rel}", source)
                    entries[rel] = {"sha256": sha, "size": size}
            manifest = {"name": name, "version": version, "registered_at": _now(), "registered_by": actor,
                        "files": entries, **details}
            payload = canonical(manifest)
            signature = self.signer.sign(payload)
            with lakefs_errors(self._host(), f"committing {name} v{version}"):
                branch.object(f"{prefix}/{MANIFEST}").upload(payload, content_type="application/json")
                branch.object(f"{prefix}/{SIGNATURE}").upload(signature, content_type="text/plain")
                commit = branch.commit(f"register {name} v{version}", metadata={
                    "model": name, "version": str(version), "manifest_sha256": hashlib.sha256(payload).hexdigest(),
                    "actor": actor}).get_commit()
            self._merge(branch, f"registering {name} v{version}")
        finally:
            with lakefs_errors(self._host(), f"removing the claim branch {branch.id}"):
                branch.delete()
        return ModelVersion(name, version, commit.id, manifest)

    def _claim(self, name: str, attempts: int = 100) -> tuple[int, lakefs.Branch]:
        """The next free version number of `name` and its claim branch (see `register`)."""
        version = (self.versions(name) or [0])[-1] + 1
        with lakefs_errors(self._host(), f"claiming a version of {name}"):
            for _ in range(attempts):
                branch = self._repo.branch(f"register-{name}-v{version}")
                try:
                    branch.create(source_reference="main", exist_ok=False)
                except lakefs.exceptions.ConflictException:  # another registration holds this number
                    version += 1
                    continue
                if not branch.object(f"models/{name}/v{version}/{MANIFEST}").exists():
                    return version, branch
                branch.delete()  # merged by a registration that finished since we listed: the next one
                version += 1
        raise RegistryError(f"registering {name}: no free version number after {attempts} tries (claim branches "
                            f"register-{name}-v* of crashed runs can be deleted)")

    def _merge(self, branch: lakefs.Branch, doing: str) -> None:
        """Merge a branch into main (main never holds uncommitted writes: every change comes through a branch)."""
        with lakefs_errors(self._host(), doing):
            branch.merge_into(self._main())

    # -- aliases -------------------------------------------------------------------------------------

    def _alias_path(self, name: str, alias: str) -> str:
        if alias not in ALIASES:
            raise RegistryError(f"invalid alias {alias!r}: expected one of {', '.join(ALIASES)}")
        return f"models/{name}/aliases/{alias}.json"

    def alias(self, name: str, alias: str) -> int | None:
        """The version an alias points at, or None."""
        obj = self._main().object(self._alias_path(name, alias))
        with lakefs_errors(self._host(), f"reading alias {name}@{alias}"):
            if not obj.exists():
                return None
            return int(json.loads(obj.reader().read())["version"])

    def promote(self, name: str, version: int, alias: str, actor: str, reason: str = "") -> str:
        """Point `alias` at `version` in one commit; promoting to production keeps the old one as `previous`."""
        if version not in self.versions(name):
            raise RegistryError(f"{name} has no version {version} (versions: {self.versions(name) or 'none'})")

        def change() -> tuple[dict[str, bytes | None], str, dict[str, str]]:
            changes = {alias: version}
            if alias == "production":
                current = self.alias(name, "production")
                if current is not None and current != version:
                    changes["previous"] = current
            writes = {self._alias_path(name, a): json.dumps({"version": v, "moved_at": _now(), "moved_by": actor,
                                                               "reason": reason}).encode()
                      for a, v in changes.items()}
            moved = ", ".join(f"{a}=v{v}" for a, v in changes.items())
            return writes, f"{name}: {moved}" + (f" ({reason})" if reason else ""), {
                "model": name, "actor": actor, "reason": reason, **{f"alias.{a}": str(v) for a, v in changes.items()}}

        return self._change_main(f"moving {name}@{alias} to v{version}", change)

    def unset(self, name: str, alias: str, actor: str, reason: str = "") -> None:
        """Remove an alias (one commit): e.g. undo the first ever promotion to production."""
        with lakefs_errors(self._host(), f"removing {name}@{alias}"):
            if not self._main().object(self._alias_path(name, alias)).exists():
                return
        self._change_main(f"removing {name}@{alias}", lambda: (
            {self._alias_path(name, alias): None}, f"{name}: unset {alias}" + (f" ({reason})" if reason else ""),
            {"model": name, "actor": actor, "reason": reason, f"alias.{alias}": "none"}))

    def _change_main(self, doing: str, change, attempts: int = 20) -> str:
        """One commit of `change()`'s writes (path → bytes, or None to delete) merged into main; returns its id.

        Written on a branch of its own and merged, never staged on main: a concurrent registration or alias
        move cannot sweep it into its own commit. A conflicting concurrent move of the same alias makes the
        merge fail; `change` is then asked again (it re-reads the aliases) on a fresh branch.
        """
        for attempt in range(attempts):
            with lakefs_errors(self._host(), doing):
                branch = self._repo.branch(f"change-{uuid.uuid4().hex[:16]}").create(source_reference="main")
            try:
                writes, message, metadata = change()
                with lakefs_errors(self._host(), doing):
                    for path, body in writes.items():
                        if body is None:
                            branch.object(path).delete()
                        else:
                            branch.object(path).upload(body, content_type="application/json")
                    commit = branch.commit(message, metadata=metadata).get_commit()
                try:
                    self._merge(branch, doing)
                except MergeConflictError:
                    if attempt == attempts - 1:
                        raise
                    continue
                return commit.id
            finally:
                with lakefs_errors(self._host(), f"removing the branch {branch.id}"):
                    branch.delete()
        raise AssertionError("unreachable")

    def rollback(self, name: str, actor: str, reason: str = "rollback") -> int:
        """Production goes back to `previous` (and `previous` to what production was)."""
        previous = self.alias(name, "previous")
        if previous is None:
            raise RegistryError(f"{name} has no previous production version to roll back to")
        self.promote(name, previous, "production", actor, reason)
        return previous

    def history(self, name: str, alias: str) -> list[dict]:
        """Every move of an alias, newest first: the promotion record."""
        path = self._alias_path(name, alias)
        with lakefs_errors(self._host(), f"reading the history of {name}@{alias}"):
            commits = self._main().log(objects=[path])
            return [{"commit": c.id, "at": c.creation_date, "message": c.message,
                     "actor": c.metadata.get("actor", ""), "version": _version_or_none(c.metadata[f"alias.{alias}"])}
                    for c in commits if f"alias.{alias}" in (c.metadata or {})]

    # -- loading -------------------------------------------------------------------------------------

    def manifest(self, name: str, version: int) -> dict:
        prefix = f"models/{name}/v{version}"
        with lakefs_errors(self._host(), f"reading {name} v{version}"):
            main = self._main()
            if not main.object(f"{prefix}/{MANIFEST}").exists():
                raise RegistryError(f"{name} v{version} is not in the registry {self.repository}")
            payload = main.object(f"{prefix}/{MANIFEST}").reader().read()
            signature_obj = main.object(f"{prefix}/{SIGNATURE}")
            signature = signature_obj.reader().read().decode() if signature_obj.exists() else ""
        if not signature:
            raise RegistryError(f"{name} v{version} is unsigned (no {SIGNATURE}): refusing to load it")
        if not self.signer.verify(payload, signature):
            raise RegistryError(f"{name} v{version}: the manifest's signature is invalid (tampered with, or "
                                "signed by another key): refusing to load it")
        return json.loads(payload)

    def fetch(self, name: str, version: int, dest: Path, only: Collection[str] | None = None) -> tuple[dict, Path]:
        """Download a verified version: signature first, then each file's sha256.

        Args:
            only: download just these files (e.g. the server needs `model.onnx`, not the checkpoint).
        """
        manifest = self.manifest(name, version)
        missing = sorted(set(only or ()) - set(manifest["files"]))
        if missing:
            raise RegistryError(f"{name} v{version} has no {', '.join(missing)} "
                                f"(files: {', '.join(manifest['files'])})")
        dest.mkdir(parents=True, exist_ok=True)
        main = self._main()
        for rel, expected in manifest["files"].items():
            if only is not None and rel not in only:
                continue
            digest = hashlib.sha256()
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with lakefs_errors(self._host(), f"downloading {name} v{version}/{rel}"), \
                    main.object(f"models/{name}/v{version}/{rel}").reader("rb") as reader, open(target, "wb") as out:
                while block := reader.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != expected["sha256"]:
                target.unlink()
                raise RegistryError(f"{name} v{version}/{rel}: sha256 {digest.hexdigest()[:12]}… does not match "
                                    f"the signed manifest's {expected['sha256'][:12]}…: refusing to load it")
        return manifest, dest


def _version_or_none(text: str) -> int | None:
    return None if text == "none" else int(text)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
