"""deploy/: the Dockerfile and Kubernetes manifests agree with the server they run.

No container engine or cluster exists here, so these tests check what can be checked: every flag
the image and the Deployment pass is a real `lakeloop serve` option, the probes hit paths the
server answers as the manifests expect, and the manifests hang together.
"""

from __future__ import annotations

import json
import re

import httpx
import typer.main
import yaml

from lakeloop.cli._app import app
from tests.serving.conftest import ROOT, lakeloop_serve

DEPLOY = ROOT / "deploy"


def manifests() -> dict[str, dict]:
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["kind"]: d for d in docs}


def serve_options() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}


def dockerfile_lists(instruction: str) -> list[str]:
    match = re.search(rf"^{instruction} (\[.*\])$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    assert match, f"no exec-form {instruction} in deploy/Dockerfile"
    return json.loads(match.group(1))


def test_image_installs_only_the_serve_extra_and_runs_lakeloop_serve():
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir --prefix=/install ".[serve]"' in text
    assert "USER 10001" in text
    entrypoint = dockerfile_lists("ENTRYPOINT")
    assert entrypoint[:2] == ["lakeloop", "serve"]
    args = entrypoint[2:] + dockerfile_lists("CMD") + manifests()["Deployment"]["spec"]["template"]["spec"][
        "containers"][0]["args"]
    unknown = {a for a in args if a.startswith("--")} - serve_options()
    assert unknown == set()


def test_manifests_hang_together():
    m = manifests()
    assert set(m) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceAccount", "Kustomization"}
    deployment = m["Deployment"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["labels"].items() >= m["Service"]["spec"]["selector"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == m["Service"]["spec"]["selector"]
    assert m["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pod["spec"]["serviceAccountName"] == m["ServiceAccount"]["metadata"]["name"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["cpu"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["mountPath"] for v in container["volumeMounts"]} == {"/cache"}
    env = {e["name"] for e in container["env"]}
    assert {"VAULT_ADDR", "LAKELOOP_LAKEFS_URL"} <= env
    assert not any(re.search(r"key|secret|token|password", e["name"], re.I) for e in container["env"])


def test_probes_answer_as_the_manifests_expect(model_file, tmp_path):
    container = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    probes = {kind: container[kind]["httpGet"]["path"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["readinessProbe"] == "/v2/health/ready"
    with lakeloop_serve(["--onnx", str(model_file), "--workers", "1", "--api-key", "k", "--no-inference-logs"],
                        tmp_path) as served:
        for path in probes.values():  # open to the kubelet: no API key
            assert httpx.get(served.url + path).status_code == 200
        scrape = manifests()["Deployment"]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
        assert httpx.get(served.url + scrape, headers={"Authorization": "Bearer k"}).status_code == 200

