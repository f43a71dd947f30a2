"""The API contract with chunks staged in S3 (`STAGING_BACKEND=s3`): the chunk, complete,
status and abort tests of the disk backend, run again against a service whose staging is
the S3 server (moto over HTTP). Re-sent, out-of-order and parallel chunks, checksums,
limits and every error answer exactly as with disk staging.

Left out: tests that look at the disk staging tree itself (with S3 staging the local
tree only ever holds chunks in flight); `tests/test_replicas.py` checks instead that no
staged object remains."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.dev.s3server import LocalS3Server
from app.settings import Settings
from tests.api import test_chunk, test_complete, test_status_abort

# Tests whose assertions are about files under LOCAL_TEMP_CHUNK_PATH/sessions.
# tests/storage/test_staging_s3.py checks the same of the staged objects.
_DISK_LAYOUT = {
    "test_session_over_max_file_size_is_413",
    "test_resent_chunk_replaces_the_old_one",
    "test_parallel_resends_of_one_index_leave_exactly_one_file",
    "test_abort_deletes_staged_data",
    "test_session_size_cap_is_exact_when_chunks_are_replaced",
    # Counts the session reads of disk staging's one-hand-off path (check, record and
    # rename together); S3 staging keeps checking the session before the body.
    "test_a_chunk_that_arrives_whole_gets_the_same_answers",
}

for _module in (test_chunk, test_complete, test_status_abort):
    for _name in dir(_module):
        if _name.startswith("test_") and _name not in _DISK_LAYOUT:
            globals()[_name] = getattr(_module, _name)


@pytest.fixture
def database(tmp_path: Any) -> dict[str, Any]:
    """SQLite only: the backends differ in staging, not in the database."""
    return {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}"}


@pytest.fixture
def staging_bucket(s3_server: LocalS3Server, bucket: str) -> str:
    """Staged chunks in a bucket of their own, so the tests' listings of the upload
    bucket see only stored files, as with disk staging."""
    name = f"{bucket}-staging"
    s3_server.create_bucket(name)
    return name


@pytest.fixture
def settings_factory(
    settings_factory: Callable[..., Settings], staging_bucket: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {"staging_backend": "s3", "s3_staging_bucket": staging_bucket, **overrides}
        return settings_factory(**values)

    return make
