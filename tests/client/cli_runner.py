"""Runs the installed `audio-upload` console script as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).with_name("audio-upload")


@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return body


def cli_env(token: str | None, state_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIO_UPLOAD_")}
    env["AUDIO_UPLOAD_STATE_DIR"] = str(state_dir)
    if token is not None:
        env["AUDIO_UPLOAD_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str], timeout_seconds: float = 300) -> CliRun:
    done = subprocess.run(
        [str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout_seconds
    )
    return CliRun(done.returncode, done.stdout, done.stderr)


async def run_cli_async(*args: str, env: dict[str, str], timeout_seconds: float = 300) -> CliRun:
    """For tests whose event loop must keep serving (a proxy in the test) meanwhile."""
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CliRun(process.returncode, stdout.decode(), stderr.decode())
