"""The processes a benchmark run starts, each on loopback, each stopped by its own pid:
the upload service and the bare FastAPI endpoint (uvicorn), tus-node-server, and the
moto S3 server (app.dev.s3server)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server, free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
TUS_DIR = Path(__file__).resolve().parent / "tus"

# perf-notes: with glibc's defaults a streaming server takes ~1 minor fault per 4 KiB
# received. These values remove them; every run states which it used.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "134217728"}
# What the README's production notes ask for, so the service is measured as deployed: at
# most two malloc arenas (part buffers read in worker threads otherwise stay in
# per-thread arenas; see bench/README.md, Peak RSS).
SERVICE_ENV = {"MALLOC_ARENA_MAX": "2"}


def _wait_ready(process: subprocess.Popen[bytes], url: str, name: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start-up")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not start in time")


def _base_env(malloc_tuned: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    if malloc_tuned:
        env.update(TUNED_MALLOC)
    return env


@dataclass
class Process:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def peak_rss_bytes(self) -> int:
        return _status_kib(self.pid, "VmHWM") * 1024

    def rss_bytes(self) -> int:
        return _status_kib(self.pid, "VmRSS") * 1024

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far, all its threads included."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # utime and stime are the 14th and 15th fields of stat(5); `fields` starts at the 3rd.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class UploadServiceConfig:
    keypair: KeyPair
    s3: LocalS3Server
    bucket: str
    work_dir: Path
    eager_flush: bool = True
    malloc_tuned: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    # bench.request_path_app:app measures the same requests without hashing or writing.
    asgi_app: str = "app.main:app"
    # Where the service's INFO log goes (its completion lines time the S3 commit); none
    # and it logs warnings only, to nowhere.
    log_path: Path | None = None


def start_upload_service(config: UploadServiceConfig) -> Process:
    port = free_port()
    staging = config.work_dir / f"staging-{port}"
    env = _base_env(config.malloc_tuned)
    env.update(
        {
            **SERVICE_ENV,
            "PYTHONPATH": str(REPO_ROOT),
            "MAIN_SERVICE_JWT_PUBLIC_KEY": config.keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": config.bucket,
            "S3_ENDPOINT_URL": config.s3.endpoint_url,
            "S3_ACCESS_KEY": DEV_ACCESS_KEY,
            "S3_SECRET_KEY": DEV_SECRET_KEY,
            "LOCAL_TEMP_CHUNK_PATH": str(staging),
            "DATABASE_URL": f"sqlite+aiosqlite:///{staging / 'uploads.db'}",
            "EAGER_FLUSH": "true" if config.eager_flush else "false",
            "LOG_LEVEL": "INFO" if config.log_path else "WARNING",
            **config.extra_env,
        }
    )
    log = open(config.log_path, "ab") if config.log_path else None  # noqa: SIM115 - the child's
    try:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", config.asgi_app, "--host", "127.0.0.1"),
                *("--port", str(port), "--no-access-log", "--log-level", "warning"),
            ],
            env=env,
            cwd=config.work_dir,
            stdout=subprocess.DEVNULL,
            stderr=log or subprocess.DEVNULL,
        )
    finally:
        if log is not None:
            log.close()  # the child has its own descriptor
    _wait_ready(process, f"http://127.0.0.1:{port}/healthz", "upload service")
    return Process("service", port, process)


def logged_since(log_path: Path, offset: int, event: str) -> dict[str, Any] | None:
    """The last JSON line with this event that the service logged after byte `offset` of
    its log (the log's size before the sample), so one sample never reads another's."""
    with log_path.open("rb") as log:
        log.seek(offset)
        lines = log.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if f'"{event}"' in line:
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
    return None


def start_bare(work_dir: Path, *, malloc_tuned: bool = True) -> Process:
    port = free_port()
    env = _base_env(malloc_tuned)
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1"),
            *("--port", str(port), "--no-access-log", "--log-level", "warning"),
        ],
        env=env,
        cwd=work_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_ready(process, f"http://127.0.0.1:{port}/docs", "bare FastAPI")
    return Process("bare", port, process)


def install_tus(install_dir: Path) -> Path:
    """`npm install` of the pinned @tus packages into a bench-local folder (once)."""
    install_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "server.mjs"):
        shutil.copy(TUS_DIR / name, install_dir / name)
    if not (install_dir / "node_modules" / "@tus" / "file-store").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=install_dir,
            check=True,
        )
    return install_dir


def start_tus(install_dir: Path, files_dir: Path) -> Process:
    port = free_port()
    files_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["node", str(install_dir / "server.mjs"), str(port), str(files_dir)],
        cwd=install_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_ready(process, f"http://127.0.0.1:{port}/files", "tus-node-server")
    return Process("tus", port, process)


def cpu_description() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = _meminfo_kib("MemTotal")
    return f"{os.cpu_count()} cores, {model}, {mem_kib // 1024 // 1024} GiB RAM"


def _meminfo_kib(name: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def hostname() -> str:
    return socket.gethostname()
