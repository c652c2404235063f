"""`edgemart fleet` raises the open-files limit its devices need, or refuses up front with the
arithmetic (before: at the common 1,024 soft limit, a traceback at device 237)."""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest

from simulators import fdlimit


def test_the_soft_limit_is_raised_to_what_the_devices_need() -> None:
    assert fdlimit.plan(1000, 5, soft=1024, hard=1_048_576) == (1_048_576, None)  # all it may
    assert fdlimit.plan(1000, 5, soft=1024, hard=resource.RLIM_INFINITY) == (5256, None)
    assert fdlimit.plan(100, 5, soft=1024, hard=4096) == (None, None)  # enough already


def test_past_the_hard_limit_the_run_is_refused_with_the_arithmetic() -> None:
    new, refusal = fdlimit.plan(5000, 5, soft=1024, hard=20_000)
    assert new is None
    assert refusal == (
        "5,000 devices need about 25,256 open files (256 + 5 per device) but the hard limit"
        " is 20,000 (ulimit -Hn): raise it, or run at most 3,948 devices here"
    )


def test_ensure_raises_this_process_soft_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = fdlimit.FDS_BASE + 300 * fdlimit.per_device(embedded_broker=True)
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"hard limit {hard} below {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))
    try:
        assert fdlimit.ensure(300, embedded_broker=True) is None
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.integration
def test_the_cli_refuses_a_fleet_the_hard_limit_cannot_hold() -> None:
    def low_limits() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))

    def fleet(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgemart", "fleet", "--devices", "5000", *extra],
            capture_output=True,
            text=True,
            preexec_fn=low_limits,
            timeout=60,
            check=False,
        )

    # the workers would fit (11 of them), but the embedded broker's ends do not
    done = fleet()
    assert done.returncode == 2
    assert "5,000 devices need about 5,256 open files (256 + 1 per device)" in done.stderr
    assert "run at most 3,840 devices here" in done.stderr
    # two workers of 2,500 devices each do not fit the hard limit either
    done = fleet("--procs", "2", "--broker", "mosquitto")
    assert done.returncode == 2
    assert "one of 2 worker processes: 2,500 devices need about 20,256 open files" in done.stderr
    assert "(256 + 8 per device)" in done.stderr
    assert "run at most 480 devices here (or give --procs more)" in done.stderr
