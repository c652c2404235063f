"""Handing a revocation to a running Mosquitto (issue 14): the CRL copied where the broker
reads it, then SIGHUP. Mosquitto 2.x reloads its configuration on SIGHUP and, with it, each
listener's certificates and `crlfile`, so a revoked device is refused at its next connect
with no broker restart (checked on 2.0.11: `tests/e2e/test_provisioning.py`). Connections
already up stay up until they drop; the device cannot come back."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from cloud_gateway.errors import GatewayError
from daemonkit.files import write_durable


class BrokerReloadError(GatewayError):
    """The broker could not be told: the pid file or the process is missing."""


def install_crl(crl: Path, target: Path) -> Path:
    """Copy the CRL to the broker's `crlfile` (atomically: the broker never reads half)."""
    try:
        write_durable(target, crl.read_bytes())
    except OSError as exc:
        raise BrokerReloadError(f"cannot copy {crl} to {target}: {exc}") from exc
    return target


def reload_broker(pid_file: Path) -> int:
    """SIGHUP the Mosquitto whose pid `pid_file` holds (its `pid_file` setting); its pid."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise BrokerReloadError(f"--broker-pid-file {pid_file}: no broker pid: {exc}") from exc
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise BrokerReloadError(f"--broker-pid-file {pid_file}: pid {pid}: {exc}") from exc
    return pid
