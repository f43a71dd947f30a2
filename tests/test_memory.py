"""Start-up hands freed heap memory back to the OS (`app.main.release_freed_heap`)."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

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


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or ctypes.util.find_library("c") != "libc.so.6",
    reason="malloc_trim is glibc's",
)
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    figures = json.loads(done.stdout)
    assert figures["before"] - figures["after"] > 30 * 1024 * 1024
