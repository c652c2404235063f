"""Durable writes (one copy for both daemons): whole new content or the old, the mode asked
for (a private key is 0600 whatever the umask), no temporary file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemonkit.files import write_durable


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    write_durable(path, b"old")
    write_durable(path, b"new content" * 1000)
    assert path.read_bytes() == b"new content" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["trust.json"]


def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_durable(tmp_path / "public", b"x")
    finally:
        os.umask(old)
    write_durable(tmp_path / "key.pem", b"secret", mode=0o600)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
