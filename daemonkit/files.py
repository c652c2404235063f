"""Durable file writes: a fsynced temporary file, an atomic rename, the directory fsynced, so
a power cut leaves the old file or the new one, never a mix."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (the directory entry itself)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write `data` to `path` via a fsynced temporary file (created with `mode`, e.g. 0o600
    for a private key) and an atomic rename, then fsync the directory. Blocking file I/O:
    call it from a thread, not the event loop."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # O_CREAT's mode is masked by the umask; the caller's is meant
    os.replace(tmp, path)
    fsync_dir(path.parent)
