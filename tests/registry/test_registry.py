"""The signed model registry against the lakeFS server and a real OpenBao transit key."""

from __future__ import annotations

import json
import uuid

import lakefs
import pytest

from lakeloop.errors import RegistryError
from lakeloop.registry import Registry, VaultSigner
from lakeloop.secrets import VaultClient, VaultSettings

pytestmark = pytest.mark.lakefs


@pytest.fixture
def registry(lakefs_server, vault) -> Registry:
    name = f"r-{uuid.uuid4().hex[:10]}"
    signer = VaultSigner(VaultClient(VaultSettings(address=vault.address, **vault.approle("pipeline"))))
    return Registry(lakefs_server.client(), name, signer, f"{lakefs_server.namespace_prefix}/{name}")


@pytest.fixture
def files(tmp_path):
    model, ckpt = tmp_path / "model.onnx", tmp_path / "last.ckpt"
    model.write_bytes(b"onnx-bytes-" * 1000)
    ckpt.write_bytes(b"checkpoint")
    return {"model.onnx": model, "checkpoint/last.ckpt": ckpt}


LINEAGE = {"lineage": {"data_repository": "lakeloop-data", "data_commit": "c" * 64, "code_version": "abc"},
           "metrics": {"pr_auc": 0.25}}


def test_register_promote_rollback_and_history(registry, files, tmp_path):
    v1 = registry.register("fraud", files, LINEAGE, actor="test")
    v2 = registry.register("fraud", files, LINEAGE, actor="test")
    assert (v1.version, v2.version) == (1, 2) and registry.versions("fraud") == [1, 2]
    assert v1.manifest["files"]["model.onnx"]["size"] == 11_000
    assert registry.alias("fraud", "production") is None

    registry.promote("fraud", 1, "production", actor="alice", reason="first release")
    registry.promote("fraud", 2, "production", actor="bob", reason="better PR AUC")
    assert registry.alias("fraud", "production") == 2 and registry.alias("fraud", "previous") == 1
    assert registry.rollback("fraud", actor="carol") == 1
    assert registry.alias("fraud", "production") == 1 and registry.alias("fraud", "previous") == 2
    history = registry.history("fraud", "production")
    assert [(h["version"], h["actor"]) for h in history] == [(1, "carol"), (2, "bob"), (1, "alice")]

    manifest, folder = registry.fetch("fraud", 2, tmp_path / "out")
    assert (folder / "model.onnx").read_bytes() == files["model.onnx"].read_bytes()
    assert manifest["lineage"]["data_commit"] == "c" * 64 and manifest["registered_by"] == "test"

    with pytest.raises(RegistryError, match="has no version 7"):
        registry.promote("fraud", 7, "production", actor="x")
    with pytest.raises(RegistryError, match="invalid alias 'prod'"):
        registry.promote("fraud", 1, "prod", actor="x")


def test_tampered_unsigned_or_forged_models_are_refused(registry, files, tmp_path, lakefs_server):
    registry.register("fraud", files, LINEAGE, actor="test")
    main = lakefs.Repository(registry.repository, client=lakefs_server.client()).branch("main")

    main.object("models/fraud/v1/model.onnx").upload(b"evil weights")
    main.commit("tamper with the weights")
    with pytest.raises(RegistryError, match=r"model.onnx: sha256 .* does not match the signed manifest"):
        registry.fetch("fraud", 1, tmp_path / "a")
    assert not (tmp_path / "a" / "model.onnx").exists()

    manifest = json.loads(main.object("models/fraud/v1/manifest.json").reader().read())
    manifest["files"]["model.onnx"]["sha256"] = "0" * 64  # a forged manifest keeps the old signature
    main.object("models/fraud/v1/manifest.json").upload(json.dumps(manifest))
    main.commit("forge the manifest")
    with pytest.raises(RegistryError, match="signature is invalid"):
        registry.fetch("fraud", 1, tmp_path / "b")

    main.object("models/fraud/v1/manifest.sig").delete()
    main.commit("drop the signature")
    with pytest.raises(RegistryError, match="is unsigned"):
        registry.fetch("fraud", 1, tmp_path / "c")


def test_serving_role_can_verify_but_not_sign(registry, files, vault, tmp_path):
    registry.register("fraud", files, LINEAGE, actor="test")
    serving = VaultSigner(VaultClient(VaultSettings(address=vault.address, **vault.approle("serving"))))
    reader = Registry(registry.client, registry.repository, serving)
    manifest, _ = reader.fetch("fraud", 1, tmp_path / "serve")
    assert manifest["version"] == 1
    from lakeloop.errors import VaultPermissionError

    with pytest.raises(VaultPermissionError):
        serving.sign(b"a model the serving role made up")


def test_concurrent_registrations_get_their_own_versions_and_files(registry, files, tmp_path):
    """A triggered retrain and a manual one registering at once: distinct versions, each holding exactly
    its own files (nothing staged by one lands in the other's commit), while aliases move on main."""
    from concurrent.futures import ThreadPoolExecutor

    registry.register("fraud", files, LINEAGE, actor="first")  # the repository and v1 exist
    registry.promote("fraud", 1, "production", actor="test")
    runs = []
    for i in range(4):
        model = tmp_path / f"model-{i}.onnx"
        model.write_bytes(f"model {i} ".encode() * (500 + i))
        runs.append({"model.onnx": model})
    with ThreadPoolExecutor(7) as pool:
        registering = [pool.submit(registry.register, "fraud", runs[i], LINEAGE, actor=f"run-{i}") for i in range(4)]
        moving = [pool.submit(registry.promote, "fraud", 1, "staging", actor=f"ops-{i}") for i in range(3)]
        done = [r.result() for r in registering]
        assert all(isinstance(m.result(), str) for m in moving)
    assert registry.alias("fraud", "staging") == 1 and len(registry.history("fraud", "staging")) == 3
    assert sorted(v.version for v in done) == [2, 3, 4, 5] and registry.versions("fraud") == [1, 2, 3, 4, 5]
    for i, version in enumerate(done):
        target = tmp_path / f"fetched-{i}"
        registry.fetch("fraud", version.version, target)  # checks the signature and every file's sha256
        assert (target / "model.onnx").read_bytes() == runs[i]["model.onnx"].read_bytes()
        assert registry.manifest("fraud", version.version)["registered_by"] == f"run-{i}"
    branches = [b.id for b in lakefs.Repository(registry.repository, client=registry.client).branches()]
    assert branches == ["main"]  # every claim branch is gone
