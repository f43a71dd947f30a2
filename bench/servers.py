"""The processes a benchmark run starts, each on loopback, each stopped by its own pid:
the upload service and the bare FastAPI endpoint (uvicorn), tus-node-server, and the
moto S3 server (app.dev.s3server); tus-node-server also with @tus/s3-store, the S3 peer.
The `servers` phase also runs the service under uvicorn with other flags and under
granian (SERVICE_SERVERS), each with the flags a production user would pass.

Each runs as its users would run it, and nothing more: the service with the README's
production command ("Running in production": `uvicorn app.main:app ... --workers N
--timeout-graceful-shutdown 30`, one worker here since one process is measured) and only
the settings a deployment must give it (keys, S3, database, staging); the bare endpoint
as `uvicorn bench.bare_app:app`; tus-node-server as its README's example. Every child
gets the bench's environment with any allocator or runtime tuning taken out
(`MALLOC_*`, `GLIBC_TUNABLES`, `PYTHON*`, `NODE_OPTIONS`, `UV_THREADPOOL_SIZE`), so what
is measured is what ships: the service tunes malloc itself (`app.main.tune_malloc`).
"""

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

# The service's production command (README, "Running in production"), host and port
# aside. `--workers 1` runs uvicorn in this process (no supervisor), so its pid is the
# worker's, whose CPU time and RSS are read.
PRODUCTION_ARGS = ("--workers", "1", "--timeout-graceful-shutdown", "30")
UVICORN = str(Path(sys.executable).with_name("uvicorn"))
GRANIAN = str(Path(sys.executable).with_name("granian"))
# The same service under granian (`--service-servers`), with what a production user would
# pass: the ASGI interface, one worker, HTTP/1 only (TLS and HTTP/2 end at the proxy), no
# websockets, uvicorn's backlog, workers killed 30 s after SIGTERM (granian itself waits
# for in-flight requests without limit), its access log off (the service logs each
# request itself).
GRANIAN_PRODUCTION_ARGS = (
    "--interface",
    "asgi",
    "--workers",
    "1",
    "--http",
    "1",
    "--no-ws",
    "--backlog",
    "2048",
    "--workers-kill-timeout",
    "30",
    "--no-access-log",
)
# uvicorn's own alternatives to its shipped flags (uvicorn[standard] picks httptools and
# uvloop by itself): the pure-Python h11 parser, the stock asyncio loop, and a
# concurrency limit (503 beyond it) with a deeper backlog.
UVICORN_VARIANTS: dict[str, tuple[str, ...]] = {
    "uvicorn": (),
    "uvicorn-h11": ("--http", "h11"),
    "uvicorn-asyncio": ("--loop", "asyncio"),
    "uvicorn-limit": ("--limit-concurrency", "256", "--backlog", "4096"),
    # Measured, not shipped: two fewer copies of each body byte (bench/lean_protocol.py).
    "uvicorn-lean": ("--http", "bench.lean_protocol:LeanHttpToolsProtocol"),
}
SERVICE_SERVERS = (*UVICORN_VARIANTS, "granian")
# Only the "before" column of `--malloc-ab` sets one: the service as it shipped before it
# tuned malloc itself (glibc defaults, and the MALLOC_ARENA_MAX=2 its README asked for).
UNTUNED_APP = "bench.untuned_app:app"
BEFORE_ENV = {"MALLOC_ARENA_MAX": "2"}
_TUNING_VARIABLES = ("GLIBC_TUNABLES", "NODE_OPTIONS", "UV_THREADPOOL_SIZE")


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


def _base_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MALLOC_", "PYTHON")) and k not in _TUNING_VARIABLES
    }


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
        return self._memory_kib("VmHWM") * 1024

    def rss_bytes(self) -> int:
        return self._memory_kib("VmRSS") * 1024

    def _memory_kib(self, field_name: str) -> int:
        """Summed over the process and its children: granian serves from a worker process
        it spawns, and its supervisor is paid for too (uvicorn with one worker has none).
        Summed peaks bound the tree's peak from above; the supervisor's stays flat."""
        return sum(_status_kib(pid, field_name) for pid in (self.pid, *_descendants(self.pid)))

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process and its children (granian serves
        from worker processes it spawns), all their threads included."""
        return sum(cpu_seconds_of(pid) for pid in (self.pid, *_descendants(self.pid)))

    def minor_faults(self) -> int:
        """Minor page faults so far of the process and its children: with glibc's default
        thresholds a streaming server takes about one per 4 KiB received (perf-notes)."""
        return sum(_stat_field(pid, 7) for pid in (self.pid, *_descendants(self.pid)))


def _stat_field(pid: int, index: int) -> int:
    """Field `index + 3` of stat(5) (after the pid and the command's name)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[index])
    except FileNotFoundError:
        return 0


def cpu_seconds_of(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    # utime and stime are the 14th and 15th fields of stat(5); `fields` starts at the 3rd.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []
    return children + [d for child in children for d in _descendants(child)]


def _status_kib(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


@dataclass
class UploadServiceConfig:
    keypair: KeyPair
    s3: LocalS3Server
    bucket: str
    work_dir: Path
    # None: the service's default (on). False only where a figure says so.
    eager_flush: bool | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # bench.request_path_app:app measures the same requests without hashing or writing.
    asgi_app: str = "app.main:app"
    # Where the service's log goes (stderr, at its default level, as deployed; the
    # completion lines time the S3 commit); none: a file of its own in work_dir.
    log_path: Path | None = None
    # The HTTP server it runs under (SERVICE_SERVERS); uvicorn is the shipped one.
    server: str = "uvicorn"


def start_upload_service(config: UploadServiceConfig) -> Process:
    port = free_port()
    staging = config.work_dir / f"staging-{port}"
    env = _base_env()
    env.update(
        {
            "MAIN_SERVICE_JWT_PUBLIC_KEY": config.keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": config.bucket,
            "S3_ENDPOINT_URL": config.s3.endpoint_url,
            "S3_ACCESS_KEY": DEV_ACCESS_KEY,
            "S3_SECRET_KEY": DEV_SECRET_KEY,
            "LOCAL_TEMP_CHUNK_PATH": str(staging),
            "DATABASE_URL": f"sqlite+aiosqlite:///{staging / 'uploads.db'}",
            **config.extra_env,
        }
    )
    if config.eager_flush is not None:
        env["EAGER_FLUSH"] = "true" if config.eager_flush else "false"
    if config.asgi_app.startswith("bench.") or config.server == "uvicorn-lean":
        # The bench's variants of the app or its server, after any other checkout's app.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (config.extra_env.get("PYTHONPATH"), str(REPO_ROOT)) if p
        )
    log_path = config.log_path or config.work_dir / f"service-{port}.log"
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            service_command(config.server, config.asgi_app, port),
            env=env,
            cwd=config.work_dir,
            stdout=log,
            stderr=log,
        )
    _wait_ready(process, f"http://127.0.0.1:{port}/healthz", "upload service")
    return Process("service", port, process)


def service_command(server: str, asgi_app: str, port: int | str) -> list[str]:
    where = ("--host", "127.0.0.1", "--port", str(port))
    if server == "granian":
        return [GRANIAN, *GRANIAN_PRODUCTION_ARGS, *where, asgi_app]
    return [UVICORN, asgi_app, *where, *PRODUCTION_ARGS, *UVICORN_VARIANTS[server]]


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


def start_bare(work_dir: Path, *, server: str = "uvicorn") -> Process:
    """`uvicorn bench.bare_app:app`, or the same app under granian (`--bare-servers`), each
    with its own defaults (uvicorn logs each request; granian does not by default)."""
    port = free_port()
    env = _base_env()
    env["PYTHONPATH"] = str(REPO_ROOT)
    where = ("--host", "127.0.0.1", "--port", str(port))
    if server == "granian":
        command = [GRANIAN, "--interface", "asgi", *where, "bench.bare_app:app"]
    else:
        command = [UVICORN, "bench.bare_app:app", *where]
    with open(work_dir / f"bare-{server}-{port}.log", "ab") as log:
        process = subprocess.Popen(command, env=env, cwd=work_dir, stdout=log, stderr=log)
    _wait_ready(process, f"http://127.0.0.1:{port}/docs", f"bare FastAPI ({server})")
    return Process(f"bare-{server}", port, process)


def install_tus(install_dir: Path) -> Path:
    """`npm install` of the pinned @tus packages into a bench-local folder (once)."""
    install_dir.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "server.mjs", "server-s3.mjs"):
        shutil.copy(TUS_DIR / name, install_dir / name)
    modules = install_dir / "node_modules" / "@tus"
    if not all((modules / store).exists() for store in ("file-store", "s3-store")):
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
        env=_base_env(),
        cwd=install_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_ready(process, f"http://127.0.0.1:{port}/files", "tus-node-server")
    return Process("tus", port, process)


def start_tus_s3(install_dir: Path, endpoint_url: str, bucket: str, tmp_dir: Path) -> Process:
    """tus-node-server with @tus/s3-store at its defaults (bench/tus/server-s3.mjs); the
    parts it cuts wait in `tmp_dir` (its os.tmpdir()) before they go to S3."""
    port = free_port()
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = _base_env()
    env.update(
        {
            "TMPDIR": str(tmp_dir),
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_KEY,
        }
    )
    process = subprocess.Popen(
        ["node", str(install_dir / "server-s3.mjs"), str(port), endpoint_url, bucket],
        env=env,
        cwd=install_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_ready(process, f"http://127.0.0.1:{port}/files", "tus-node-server (S3 store)")
    return Process("tus_s3", port, process)


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
