"""The development key pair and token are secrets: owner-only from the first byte."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.dev.keys import KeyPair, write_private_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    # The worst case: a umask that lets everything through.
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_the_private_key_and_token_are_created_owner_only(tmp_path: Path) -> None:
    pair = KeyPair.load_or_create(tmp_path / "keys")
    assert mode_of(tmp_path / "keys" / "jwt-private.pem") == 0o600
    assert (tmp_path / "keys" / "jwt-private.pem").read_text() == pair.private_pem
    token = tmp_path / "token"
    write_private_file(token, pair.token())
    assert mode_of(token) == 0o600
    # A file that was there with a loose mode is tightened, not just overwritten.
    token.chmod(0o644)
    write_private_file(token, "again")
    assert (mode_of(token), token.read_text()) == (0o600, "again")


@pytest.mark.usefixtures("open_umask")
def test_a_symlink_at_the_secret_path_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "token").symlink_to(victim)
    with pytest.raises(OSError, match="symbolic links"):
        write_private_file(tmp_path / "token", "secret")
    assert victim.read_text() == "keep"
