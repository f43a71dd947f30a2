"""Start-up tunes glibc's malloc for streaming (`app.main.tune_malloc`) and hands freed
heap memory back to the OS (`app.main.release_freed_heap`)."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair

GLIBC = sys.platform.startswith("linux") and ctypes.util.find_library("c") == "libc.so.6"

# A fresh interpreter, so the figures are not mixed with the test run's own heap. Blocks
# of 64 KiB come from malloc's heap (below its mmap threshold, above Python's small-object
# allocator); the last one stays alive, so glibc cannot give the freed ones back by
# shrinking the heap's top and keeps them until asked.
PROBE = """
import json
from pathlib import Path
from app.main import release_freed_heap

def rss_anon_bytes():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

blocks = [bytes(64 * 1024) for _ in range(800)]
pin = bytes(64 * 1024)
del blocks
before = rss_anon_bytes()
release_freed_heap()
print(json.dumps({"before": before, "after": rss_anon_bytes()}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    figures = json.loads(done.stdout)
    assert figures["before"] - figures["after"] > 30 * 1024 * 1024


# The app built the way `uvicorn app.main:app` builds it (module attribute `app`, settings
# from the environment), then a streaming server's allocation pattern: each 1 MiB body
# arrives as 64 KiB pieces appended to a buffer and handed on as `bytes`. With glibc's
# defaults this faults in about two pages per 4 KiB received, every time.
STREAMING_PROBE = """
import json, resource
import app.main

app.main.app
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
piece = bytes(64 * 1024)
before = faults()
for _ in range(256):
    buffer = bytearray()
    for _ in range(16):
        buffer += piece
    body = bytes(buffer)
    del buffer, body
print(json.dumps({"faults": faults() - before, "tuned": app.main.tune_malloc()}))
"""


def run_streaming_probe(tmp_path: Path, **extra_env: str) -> dict[str, object]:
    keypair = KeyPair.generate()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GLIBC_TUNABLES", None)
    env.update(
        {
            "MAIN_SERVICE_JWT_PUBLIC_KEY": keypair.public_pem,
            "EXPECTED_JWT_ISSUER": DEV_ISSUER,
            "EXPECTED_JWT_AUDIENCE": DEV_AUDIENCE,
            "S3_BUCKET_NAME": "probe-bucket",
            "LOCAL_TEMP_CHUNK_PATH": str(tmp_path / "staging"),
            "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}",
            **extra_env,
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", STREAMING_PROBE],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_the_built_app_streams_without_page_faults(tmp_path: Path) -> None:
    figures = run_streaming_probe(tmp_path)
    pages_received = 256 * 1024 * 1024 // 4096
    # Tuned: the buffers are reused from the heap (~500 faults here); untuned ~2 per page.
    assert isinstance(figures["faults"], int) and figures["faults"] < pages_received // 20


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_malloc_settings_from_the_environment_win(tmp_path: Path) -> None:
    figures = run_streaming_probe(
        tmp_path, MALLOC_ARENA_MAX="4", GLIBC_TUNABLES="glibc.malloc.trim_threshold=1048576"
    )
    assert figures["tuned"] == {"MALLOC_MMAP_THRESHOLD_": 32 * 1024 * 1024}
