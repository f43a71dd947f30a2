"""deploy/: the compose file and the Kubernetes manifests validate against their schemas
offline (check-jsonschema's bundled compose spec, kubernetes-validate's bundled
Kubernetes schemas, strict), and they keep the settings that make a deployment right:
graceful shutdown longer than the service's own, unbuffered proxying, forwarded headers
trusted only from the proxy, probes on the right endpoints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# Kustomize's own file is no Kubernetes resource; kubernetes-validate has no schema for it.
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
# The oldest release still commonly run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = check_compose(DEPLOY / "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = load(DEPLOY / "compose.yaml")
    broken["services"]["upload"]["stop_grace_periods"] = "40s"  # a typo
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = check_compose(path)
    assert result.returncode != 0
    assert "'stop_grace_periods' was unexpected" in result.stdout, result.stdout


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifest_validates(path: Path, version: str) -> None:
    kubernetes_validate.validate(load(path), version, strict=True)


def test_the_kubernetes_validator_rejects_an_unknown_field() -> None:
    deployment = load(KUBERNETES / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = load(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    for name in listed:
        assert (KUBERNETES / name).exists()


def test_deployment_probes_shutdown_and_resources() -> None:
    deployment = load(KUBERNETES / "deployment.yaml")
    config = load(KUBERNETES / "configmap.yaml")["data"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > int(config["SHUTDOWN_GRACE_SECONDS"]) + pause
    assert container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics"
    references = {ref[kind]["name"] for ref in container["envFrom"] for kind in ref}
    assert references == {"upload-service"}
    assert load(KUBERNETES / "secret.example.yaml")["metadata"]["name"] == "upload-service"


def test_service_pdb_and_hpa_select_the_deployment() -> None:
    deployment = load(KUBERNETES / "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert load(KUBERNETES / "service.yaml")["spec"]["selector"].items() <= labels.items()
    pdb = load(KUBERNETES / "pdb.yaml")["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()
    target = load(KUBERNETES / "hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])


def _seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return int(match.group(1))


def test_compose_replicas_proxy_and_shutdown() -> None:
    compose = load(DEPLOY / "compose.yaml")
    services = compose["services"]
    upload = services["upload"]
    env = upload["environment"]
    assert upload["deploy"]["replicas"] == 2
    assert _seconds(upload["stop_grace_period"]) > int(env["SHUTDOWN_GRACE_SECONDS"])
    # Forwarded headers are trusted from nginx's fixed address and nobody else.
    assert env["FORWARDED_ALLOW_IPS"] == services["nginx"]["networks"]["uploads"]["ipv4_address"]
    assert env["MAIN_SERVICE_NOTIFY_URL"].startswith("http://webhook:")
    assert "app.dev.webhook_receiver" in services["webhook"]["command"]
    conf = (DEPLOY / "nginx" / "upload.conf").read_text()
    assert "proxy_request_buffering off;" in conf
    assert "include /etc/nginx/conf.d/body-size.inc;" in conf
    # A whole-file tus PATCH is not held to the chunk-sized cap.
    files = conf[conf.index("location /files/ {") :]
    assert "client_max_body_size 0;" in files[: files.index("}")]


def test_nginx_body_limit_is_a_little_over_max_chunk_size(tmp_path: Path) -> None:
    script = (DEPLOY / "nginx" / "40-body-size.sh").read_text()
    script = script.replace("/etc/nginx/conf.d/body-size.inc", str(tmp_path / "body-size.inc"))
    (tmp_path / "run.sh").write_text(script)
    subprocess.run(
        ["sh", str(tmp_path / "run.sh")], env={"MAX_CHUNK_SIZE": "1000"}, check=True, timeout=30
    )
    assert (tmp_path / "body-size.inc").read_text().strip() == "client_max_body_size 1049576;"


def test_dockerfile_has_what_the_runtime_relies_on() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.12-slim-bookworm" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.MULTILINE)
    assert "--timeout-graceful-shutdown" in dockerfile
    # The service tunes malloc itself; an environment value would override it.
    assert not re.search(r"^\s*MALLOC_\w+=", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored  # everything is left out unless listed
    assert not any(line.startswith("!") and ".env" in line for line in ignored)
