"""Start-up checks both daemons and the demo make before any side effect: is a port free to
listen on, does a broker's address answer. Each answers a sentence for the user, or None."""

from __future__ import annotations

import errno
import socket


def busy(host: str, port: int) -> str | None:
    """Why `host:port` cannot be listened on now (e.g. another process holds it), or None.
    Port 0 (any free port) is never busy. A check, not a reservation: the daemon binds it
    again a moment later."""
    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # The same option aiohttp's server sets: a port in TIME_WAIT is not busy for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is already in use by another process"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def unreachable(host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why nothing accepts a TCP connection at `host:port` within `timeout`, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc.strerror or exc}"
