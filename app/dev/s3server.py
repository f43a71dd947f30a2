"""A local S3-compatible server (moto in server mode) on loopback, for development and
tests. It keeps everything in memory: restart it and the bucket is gone."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field

from app.dev.child import die_with_parent, free_port, stop, wait_until_answering

__all__ = ["DEV_ACCESS_KEY", "DEV_SECRET_KEY", "LocalS3Server", "free_port"]

DEV_ACCESS_KEY = "dev-access-key"
DEV_SECRET_KEY = "dev-secret-key"  # noqa: S105 - moto accepts any credentials


@dataclass
class LocalS3Server:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_seconds: float = 30.0) -> LocalS3Server:
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            preexec_fn=die_with_parent,
        )
        try:
            wait_until_answering(
                self.process,
                f"{self.endpoint_url}/moto-api/",
                name="local S3 server",
                timeout_seconds=timeout_seconds,
            )
        finally:
            if self.process.poll() is not None:
                self.process = None
        return self

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def client(self, region: str = "us-east-1") -> object:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            aws_access_key_id=DEV_ACCESS_KEY,
            aws_secret_access_key=DEV_SECRET_KEY,
        )

    def create_bucket(self, name: str, region: str = "us-east-1") -> None:
        client = self.client(region)
        kwargs: dict[str, object] = {"Bucket": name}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        client.create_bucket(**kwargs)  # type: ignore[attr-defined]
