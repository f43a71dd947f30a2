"""The service as it shipped before it tuned malloc itself: the same app with
`tune_malloc` a no-op, so glibc's defaults apply (the bench starts it with the
`MALLOC_ARENA_MAX=2` that the README then asked for). Only `--malloc-ab` runs it: the
"before" column beside the shipped service, in the same run."""

from __future__ import annotations

from app import main as service


def _untuned() -> dict[str, int]:
    return {}


service.tune_malloc = _untuned
app = service.create_app()
