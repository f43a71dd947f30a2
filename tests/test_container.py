"""The container image, built and run for real with podman (issue 15).

Builds the repo's Dockerfile on a Debian-made base (deploy/podman/base-image, cached as
localhost/python-base:bookworm), runs two containers of it on the host network against
the machine's PostgreSQL and a moto server on loopback, plus the webhook stand-in from
the same image; uploads real audio through both (chunks alternating), checks the
object's SHA-256 and the verified webhook; then sends SIGTERM to one container while a
chunk is mid-body and checks that the chunk finishes, nothing acknowledged is lost, and
the process exits in time. It also checks the image runs as a non-root user and holds
no key, token or .env in any layer.

Skipped, with the reason, only where podman cannot run (not installed, not root, or
`podman info` fails). The podman flags are the ones this machine kind needs: runc and
cgroupfs (crun and systemd cgroups fail), `--ulimit host`, the host network, and the
host's CA bundle mounted into the build so pip can reach the package registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server, free_port
from tests.processes import (
    chunk_request,
    make_wav,
    read_response,
    refuses_connections,
    staged_files,
    wait_until,
)
from tests.support import split

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PODMAN = ("podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs")
BASE_IMAGE = "localhost/python-base:bookworm"
IMAGE = "localhost/upload-service:test"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STAGING_IN_IMAGE = "/var/lib/upload-service/staging"
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
GRACE_SECONDS = 10
KiB = 1024


def _podman_problem() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (scripts/bootstrap --system installs it)"
    if os.geteuid() != 0:
        return "podman runs here only as root (rootless needs subuid set-up this test skips)"
    info = subprocess.run([*PODMAN, "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"podman cannot run here: {info.stderr.strip()[-300:]}"
    return None


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed:\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def image() -> str:
    problem = _podman_problem()
    if problem is not None:
        pytest.skip(problem)
    base = subprocess.run(
        [str(REPO / "deploy" / "podman" / "base-image")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert base.returncode == 0, base.stderr[-3000:]
    ca_volume = ("-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro") if Path(CA_BUNDLE).exists() else ()
    # --format docker keeps HEALTHCHECK, which the OCI image format has no field for.
    podman(
        "build",
        "--network",
        "host",
        "--format",
        "docker",
        *ca_volume,
        "--build-arg",
        f"PYTHON_IMAGE={BASE_IMAGE}",
        "-t",
        IMAGE,
        str(REPO),
        timeout=1800,
    )
    return IMAGE


@pytest.fixture(scope="module")
def ulimits(image: str) -> tuple[str, ...]:
    """`--ulimit host`, where podman can apply it. It asks for podman's own raised limits
    (1048576 open files), which fails with EPERM where root lacks CAP_SYS_RESOURCE (seen
    on this machine kind when the calling process's hard limit is lower); then the
    limits this process has, which the container may always keep."""
    probe = subprocess.run(
        [*PODMAN, "run", "--rm", "--ulimit", "host", "--network", "host", image, "true"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode == 0:
        return ("--ulimit", "host")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # podman caps its own (and so the runtime's) process limit at 32768.
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    return ("--ulimit", f"nofile={soft}:{hard}", "--ulimit", f"nproc={processes}:{processes}")


@pytest.fixture
def postgres_schema() -> Iterator[dict[str, str]]:
    ready = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True, timeout=10
    )
    assert ready.returncode == 0, "the replicas need the PostgreSQL at 127.0.0.1:5432"
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield {"DATABASE_URL": POSTGRES_URL, "DATABASE_SCHEMA": schema}
    subprocess.run(
        [
            *("psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c"),
            f'DROP SCHEMA IF EXISTS "{schema}" CASCADE',
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )


@dataclass
class Container:
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = subprocess.run(
            [*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=60
        )
        return (result.stdout + result.stderr)[-4000:]

    def healthy(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        if state.strip() != "true":
            raise AssertionError(f"{self.name} stopped:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


class Containers:
    """Containers this test started, removed at the end whatever happened."""

    def __init__(self, image: str, workdir: Path, ulimits: tuple[str, ...]) -> None:
        self.image = image
        self.workdir = workdir
        self.ulimits = ulimits
        self.started: list[Container] = []

    def run(
        self,
        role: str,
        port: int,
        env: dict[str, str],
        *args: str,
        command: tuple[str, ...] = (),
    ) -> Container:
        container = Container(f"upload-test-{role}-{uuid.uuid4().hex[:8]}", port)
        # An env file (0600), not -e: keeps the key out of the process list.
        env_file = self.workdir / f"{container.name}.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        env_file.chmod(0o600)
        self.started.append(container)
        podman(
            "run",
            "-d",
            "--name",
            container.name,
            *self.ulimits,
            "--network",
            "host",
            "--env-file",
            str(env_file),
            *args,
            self.image,
            *command,
        )
        return container

    def remove_all(self) -> None:
        for container in self.started:
            podman("rm", "-f", "-t", "0", container.name, check=False)


@pytest.fixture
def containers(image: str, ulimits: tuple[str, ...], tmp_path: Path) -> Iterator[Containers]:
    running = Containers(image, tmp_path, ulimits)
    try:
        yield running
    finally:
        running.remove_all()


class Uploader:
    """The calls a client makes, each sent to whichever replica the test picks."""

    def __init__(self, keypair: KeyPair) -> None:
        self.token = keypair.token("user-1")
        self.headers = {"Authorization": f"Bearer {self.token}"}

    def init(self, replica: Container, data: bytes, file_id: int) -> str:
        response = httpx.post(
            f"{replica.url}/upload/init",
            headers=self.headers,
            json={
                "main_service_file_id": file_id,
                "original_file_name": "voice.wav",
                "total_size": len(data),
            },
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["data"]["upload_session_id"])

    def chunk(self, replica: Container, session_id: str, index: int, data: bytes) -> None:
        response = httpx.post(
            f"{replica.url}/upload/chunk",
            headers=self.headers,
            data={"upload_session_id": session_id, "chunk_index": str(index)},
            files={"chunk": ("blob", data)},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["sha256"] == hashlib.sha256(data).hexdigest()

    def complete(
        self, replica: Container, session_id: str, total: int, file_id: int
    ) -> dict[str, Any]:
        response = httpx.post(
            f"{replica.url}/upload/complete",
            headers=self.headers,
            json={
                "upload_session_id": session_id,
                "total_chunks": total,
                "main_service_file_id": file_id,
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def status(self, replica: Container, session_id: str) -> dict[str, Any]:
        response = httpx.get(f"{replica.url}/upload/{session_id}", headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data


def _received_events(receiver: Container) -> list[dict[str, Any]]:
    try:
        events: list[dict[str, Any]] = httpx.get(f"{receiver.url}/events", timeout=2).json()
    except httpx.HTTPError:
        return []
    return events


def _event_for(receiver: Container, key: str) -> dict[str, Any] | None:
    return next((e for e in _received_events(receiver) if e.get("key") == key), None)


def _object_sha256(s3: Any, bucket: str, key: str) -> str:
    return hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()


def test_two_replicas_upload_notify_and_shut_down_gracefully(
    image: str,
    containers: Containers,
    postgres_schema: dict[str, str],
    keypair: KeyPair,
    s3_server: LocalS3Server,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    secret = secrets.token_hex(16)
    receiver_port = free_port()
    receiver = containers.run(
        "webhook",
        receiver_port,
        {"WEBHOOK_SECRET": secret},
        command=("python3", "-m", "app.dev.webhook_receiver", "--port", str(receiver_port)),
    )
    # As deploy/ ships them: S3 staging, each replica with a local directory of its own
    # (only chunks in flight live there), sharing nothing but PostgreSQL and the bucket.
    staging_a, staging_b = tmp_path / "staging-a", tmp_path / "staging-b"
    for directory in (staging_a, staging_b):
        directory.mkdir()
        os.chown(directory, 10001, 10001)
    common = {
        "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem.strip().replace("\n", "\\n"),
        "EXPECTED_JWT_ISSUER": DEV_ISSUER,
        "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
        "S3_BUCKET_NAME": bucket,
        "S3_ENDPOINT_URL": s3_server.endpoint_url,
        "S3_ACCESS_KEY": DEV_ACCESS_KEY,
        "S3_SECRET_KEY": DEV_SECRET_KEY,
        "MAIN_SERVICE_NOTIFY_URL": f"{receiver.url}/hooks/uploads",
        "MAIN_SERVICE_NOTIFY_SECRET": secret,
        "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
        "LOG_LEVEL": "WARNING",
        "STAGING_BACKEND": "s3",
        **postgres_schema,
    }
    port_a, port_b = free_port(), free_port()
    a = containers.run(
        "a", port_a, {**common, "PORT": str(port_a)}, "-v", f"{staging_a}:{STAGING_IN_IMAGE}"
    )
    b = containers.run(
        "b", port_b, {**common, "PORT": str(port_b)}, "-v", f"{staging_b}:{STAGING_IN_IMAGE}"
    )
    for replica in (receiver, a, b):
        wait_until(replica.healthy, timeout_seconds=120, what=f"{replica.name} to be healthy")

    # Runs as the image's unprivileged user; the HEALTHCHECK made it into the image.
    status_lines = podman("exec", a.name, "cat", "/proc/1/status").splitlines()
    uid_line = next(line for line in status_lines if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {"10001"}, uid_line
    assert "/healthz" in podman(
        "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image
    )
    # The image's own HEALTHCHECK command, run once (podman's timers need systemd).
    assert podman("healthcheck", "run", b.name).strip() in ("", "healthy")

    # 1. Real audio through both replicas, chunks alternating; complete on the other one.
    source = make_wav(tmp_path / "voice.wav", 6)  # ~1 MB
    chunks = split(source, 128 * KiB)
    uploader = Uploader(keypair)
    session_id = uploader.init(a, source, file_id=7)
    for index, data in enumerate(chunks):
        uploader.chunk((a, b)[index % 2], session_id, index, data)
    done = uploader.complete(b, session_id, len(chunks), file_id=7)["data"]
    want = hashlib.sha256(source).hexdigest()
    assert done["sha256"] == want
    assert _object_sha256(s3, bucket, done["key"]) == want
    event = wait_until(
        lambda: _event_for(receiver, done["key"]),
        timeout_seconds=60,
        what="the verified webhook",
    )
    assert event["upload_session_id"] == session_id
    assert event["sha256"] == want
    assert event["main_service_file_id"] == 7
    assert "webhook verified: upload.completed" in receiver.logs()

    # 2. SIGTERM to replica A while a chunk is mid-body.
    source2 = make_wav(tmp_path / "second.wav", 12)  # ~2 MB
    chunks2 = split(source2, 1024 * KiB)
    session2 = uploader.init(b, source2, file_id=8)
    uploader.chunk(b, session2, 0, chunks2[0])
    head, body = chunk_request("127.0.0.1", uploader.token, session2, 1, chunks2[1])
    cut = len(body) * 3 // 4
    with socket.create_connection(("127.0.0.1", a.port)) as in_flight:
        in_flight.sendall(head + body[:cut])
        wait_until(
            lambda: staged_files(staging_a, "incoming"),
            timeout_seconds=30,
            what="the chunk to be partly on disk",
        )
        signalled_at = time.monotonic()
        podman("kill", "--signal", "TERM", a.name)
        wait_until(
            lambda: refuses_connections(a.port), timeout_seconds=GRACE_SECONDS, what="refusal"
        )
        in_flight.sendall(body[cut:])
        response = read_response(in_flight, 30)
    # The in-flight chunk finishes within the grace period: acknowledged, so kept.
    assert response.startswith(b"HTTP/1.1 200"), response[:300]
    exit_code = int(podman("wait", a.name, timeout=GRACE_SECONDS + 60).strip())
    assert time.monotonic() - signalled_at < GRACE_SECONDS + 30
    assert exit_code == 0, a.logs()
    assert "Traceback" not in a.logs()
    assert staged_files(staging_a, "incoming") == []

    # Nothing acknowledged was lost: B sees both chunks and finishes the upload.
    assert uploader.status(b, session2)["received_chunks"] == [0, 1]
    for index in range(2, len(chunks2)):
        uploader.chunk(b, session2, index, chunks2[index])
    done2 = uploader.complete(b, session2, len(chunks2), file_id=8)["data"]
    assert _object_sha256(s3, bucket, done2["key"]) == hashlib.sha256(source2).hexdigest()
    wait_until(
        lambda: _event_for(receiver, done2["key"]),
        timeout_seconds=60,
        what="the second verified webhook",
    )


def test_podman_kube_play_runs_the_deployment_manifest(
    image: str,
    ulimits: tuple[str, ...],
    postgres_schema: dict[str, str],
    keypair: KeyPair,
    s3_server: LocalS3Server,
    s3: Any,
    bucket: str,
    tmp_path: Path,
) -> None:
    """deploy/kubernetes/deployment.yaml and configmap.yaml as podman's kube play runs
    them, with what only a cluster has replaced: one replica on the host network (so no
    port mapping), the test image, an emptyDir for each volume, and
    the Secret's values in the ConfigMap (podman has no Kubernetes Secrets)."""
    if shutil.which("catatonit") is None:
        pytest.skip("podman kube play needs catatonit for its pause image (bootstrap installs it)")
    import yaml  # type: ignore[import-untyped]

    manifests = REPO / "deploy" / "kubernetes"
    name = f"upload-kube-{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = yaml.safe_load((manifests / "configmap.yaml").read_text())
    config["metadata"]["name"] = name
    config["data"].pop("MAIN_SERVICE_JWKS_URL")
    config["data"].pop("MAIN_SERVICE_NOTIFY_URL")
    config["data"].update(
        {
            "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": bucket,
            "S3_ENDPOINT_URL": s3_server.endpoint_url,
            "S3_ACCESS_KEY": DEV_ACCESS_KEY,
            "S3_SECRET_KEY": DEV_SECRET_KEY,
            **postgres_schema,
        }
    )
    deployment = yaml.safe_load((manifests / "deployment.yaml").read_text())
    deployment["metadata"]["name"] = name
    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container["image"] = image
    container["envFrom"] = [{"configMapRef": {"name": name}}]
    container.pop("ports")
    for entry in container["env"]:
        if entry["name"] == "PORT":
            entry["value"] = str(port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = port
    pod["volumes"] = [{"name": volume["name"], "emptyDir": {}} for volume in pod["volumes"]]
    play = tmp_path / "play.yaml"
    play.write_text(yaml.safe_dump_all([config, deployment]))
    env = dict(os.environ)
    if ulimits != ("--ulimit", "host"):
        # kube play has no --ulimit; containers.conf's defaults do the same.
        limits = ", ".join(f'"{value}"' for value in ulimits[1::2])
        conf = tmp_path / "containers.conf"
        conf.write_text(f"[containers]\ndefault_ulimits = [{limits}]\n")
        env["CONTAINERS_CONF"] = str(conf)
    played = subprocess.run(
        [*PODMAN, "kube", "play", "--network", "host", str(play)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    replica = Container(f"{name}-pod-0-upload-service", port)
    try:
        assert played.returncode == 0, played.stderr[-3000:]
        ready = wait_until(
            lambda: _ready_checks(replica),
            timeout_seconds=120,
            what="the played pod to be ready",
        )
        assert ready == {"database": "ok", "s3": "ok", "staging": "ok"}
        inspected = json.loads(podman("inspect", replica.name))[0]
        assert inspected["Config"]["User"] == "10001:10001"
        assert not [e for e in inspected["Config"]["Env"] if e.startswith("MALLOC_")]
        source = make_wav(tmp_path / "played.wav", 2)
        uploader = Uploader(keypair)
        session_id = uploader.init(replica, source, file_id=9)
        uploader.chunk(replica, session_id, 0, source)
        done = uploader.complete(replica, session_id, 1, file_id=9)
        assert done["message"] == "File upload completed."  # no notify URL configured
        assert _object_sha256(s3, bucket, done["data"]["key"]) == hashlib.sha256(source).hexdigest()
    finally:
        subprocess.run(
            [*PODMAN, "kube", "down", str(play)], capture_output=True, timeout=120, check=False
        )


def _ready_checks(replica: Container) -> dict[str, str] | None:
    try:
        response = httpx.get(f"{replica.url}/readyz", timeout=2)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    checks: dict[str, str] = response.json()["data"]["checks"]
    return checks


def test_the_image_holds_no_key_token_or_env_file(image: str, tmp_path: Path) -> None:
    archive = tmp_path / "image.tar"
    podman("save", "--format", "docker-archive", "-o", str(archive), image, timeout=600)
    offenders: list[str] = []
    with tarfile.open(archive) as outer:
        for member in outer.getmembers():
            if not (member.isfile() and member.name.endswith(".tar")):
                continue
            layer_file = outer.extractfile(member)
            assert layer_file is not None
            with tarfile.open(fileobj=layer_file) as layer:
                offenders += _secrets_in_layer(layer)
    assert offenders == []
    config = json.loads(podman("image", "inspect", image))[0]["Config"]
    names = [entry.split("=", 1)[0] for entry in config.get("Env", [])]
    assert not [n for n in names if any(w in n for w in ("KEY", "SECRET", "TOKEN", "PASSWORD"))]
    assert config["User"] not in ("", "0", "root")
    assert config.get("StopSignal") == "SIGTERM"


def _secrets_in_layer(layer: tarfile.TarFile) -> list[str]:
    found: list[str] = []
    for entry in layer:
        name = entry.name
        base = name.rsplit("/", 1)[-1]
        if base == ".env" or "/.dev/" in f"/{name}" or base in ("token", "jwt-private.pem"):
            found.append(name)
            continue
        # Our own files and anything outside installed packages and the OS's /usr
        # (libraries such as botocore and cryptography ship example and parser keys).
        third_party = name.startswith("usr/") or (
            "/site-packages/" in name and "/site-packages/app/" not in name
        )
        if entry.isfile() and entry.size < 1 << 20 and not third_party:
            handle = layer.extractfile(entry)
            if handle is not None and b"PRIVATE KEY-----" in handle.read():
                found.append(name)
    return found


def test_the_layer_scan_finds_keys_and_env_files() -> None:
    import io

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as layer:
        for name, data in [
            ("srv/upload/.env", b"S3_SECRET_KEY=x"),
            ("srv/upload/keys/service.pem", b"-----BEGIN PRIVATE KEY-----\nMII..."),
            ("opt/venv/lib/python3.11/site-packages/app/x.py", b"BEGIN RSA PRIVATE KEY-----"),
            ("opt/venv/lib/python3.11/site-packages/botocore/ex.json", b"PRIVATE KEY-----"),
            ("srv/upload/alembic.ini", b"[alembic]"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            layer.addfile(info, io.BytesIO(data))
    archive.seek(0)
    with tarfile.open(fileobj=archive) as layer:
        assert _secrets_in_layer(layer) == [
            "srv/upload/.env",
            "srv/upload/keys/service.pem",
            "opt/venv/lib/python3.11/site-packages/app/x.py",
        ]
