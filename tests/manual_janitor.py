"""For test modules that run the janitor's passes themselves: importing
`settings_factory_without_janitor_loop` there replaces conftest's `settings_factory` with
one that turns the service's own janitor loop off. Its first pass runs whenever the event
loop gets to it after start-up and could take what a test set up for its own pass (moto
reports every multipart upload as initiated in 2010, so a fresh orphan is past any
grace): a flake seen ~1 run in 10 under load."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from app.settings import Settings


@pytest.fixture(name="settings_factory")
def settings_factory_without_janitor_loop(
    settings_factory: Callable[..., Settings],
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return settings_factory(**{"janitor_interval_seconds": 0, **overrides})

    return make
