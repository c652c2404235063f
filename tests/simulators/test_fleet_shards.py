"""The arithmetic of `--shard K/N`, `edgemart fleet merge` and the worker processes' file
descriptors (no process started)."""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from simulators import fdlimit
from simulators.checker import device_digest
from simulators.fleet_merge import merge
from simulators.options import FleetOptions


def test_the_shards_of_a_fleet_are_disjoint_and_cover_it() -> None:
    shards = [FleetOptions(households=11, shard=(k, 3)).shard_households() for k in (1, 2, 3)]
    assert sorted(i for s in shards for i in s) == list(range(11))
    assert [len(s) for s in shards] == [4, 4, 3]
    assert [FleetOptions(households=11, shard=(k, 3)).runs_crash_devices for k in (1, 2)] == [
        True,
        False,
    ]
    with pytest.raises(ValueError, match="1 <= K <= N"):
        FleetOptions(shard=(3, 2))
    with pytest.raises(ValueError, match="is empty"):
        FleetOptions(households=1, shard=(2, 2))


def test_device_digests_of_disjoint_shards_combine_to_the_whole() -> None:
    whole = device_digest(["a", "b", "c"])
    assert whole == device_digest(["c", "a", "b", "a"])  # a set: order and repeats free
    left, right = int(device_digest(["a"]), 16), int(device_digest(["b", "c"]), 16)
    assert f"{left ^ right:064x}" == whole


def _report(shard: str, devices: list[str], undelivered: dict[str, int]) -> dict[str, Any]:
    held = sum(undelivered.values())
    return {
        "shard": shard,
        "devices": len(devices),
        "households": 1,
        "signals_accepted": 10 * len(devices),
        "signals_stored": 10 * len(devices) - held,
        "signals_undelivered": held,
        "undelivered_device_count": len(undelivered),
        "undelivered_devices": [
            {"device": d, "signals": n, "why": "link backing_off"} for d, n in undelivered.items()
        ],
        "signals_lost": 0,
        "drained": not undelivered,
        "device_digest": device_digest(devices),
        "accounting_counts": {
            "accepted": 10 * len(devices),
            "stored": 10 * len(devices) - held,
            "undelivered": held,
            "undelivered_devices": len(undelivered),
        },
    }


def test_merge_sums_the_books_and_names_a_device_that_did_not_drain() -> None:
    merged = merge(
        [_report("2/2", ["c", "d"], {"d": 4}), _report("1/2", ["a", "b"], {})],
    )
    assert merged["devices"] == 4
    assert merged["device_digest"] == device_digest(["a", "b", "c", "d"])
    assert (merged["signals_accepted"], merged["signals_stored"]) == (40, 36)
    assert merged["signals_lost"] == 0
    assert merged["signals_undelivered"] == 4
    assert merged["undelivered_devices"][0]["device"] == "d"
    assert merged["drained"] is False
    assert "undelivered 4 (still on 1 devices); lost 0" in merged["accounting"]


def test_merge_refuses_what_is_not_every_shard_once() -> None:
    one = _report("1/2", ["a"], {})
    with pytest.raises(ValueError, match="not every shard of 2 exactly once"):
        merge([one])
    with pytest.raises(ValueError, match="not every shard of 2 exactly once"):
        merge([one, one])
    with pytest.raises(ValueError, match="--shard K/N run"):
        merge([{**one, "shard": None}])
    two = _report("2/2", ["b"], {})
    with pytest.raises(ValueError, match="different gateways: http://g:1, own process"):
        merge([{**one, "gateway": "http://g:1"}, two])
    assert merge([{**one, "gateway": "http://g:1"}, {**two, "gateway": "http://g:1"}])[
        "gateway"
    ] == ["http://g:1"]


def test_workers_are_added_until_each_one_fits_the_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    fit = (hard - fdlimit.FDS_BASE) // fdlimit.FDS_PER_DEVICE
    options = FleetOptions(households=(3 * fit) // 4 + 1, procs=None)
    assert fdlimit.workers_needed(options) >= 4
    assert fdlimit.workers_needed(FleetOptions(households=1, procs=3)) == 3
    crowded = FleetOptions(households=fit, procs=1)  # 4 x fit devices in one worker
    refusal = fdlimit.ensure_fleet(crowded, 0)
    assert refusal is not None
    assert "one of 1 worker processes" in refusal
    assert "give --procs more" in refusal


def test_a_shared_gateway_refuses_the_faults_that_would_restart_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edgemart.cli import main  # noqa: PLC0415

    shared = [
        *("fleet", "--gateway", "http://127.0.0.1:9", "--gateway-token-file", "token"),
        *("--trust", "trust.json", "--broker", "mqtt://127.0.0.1:9", "--topic-root", "r/v1"),
    ]
    assert main([*shared, "--faults", "gateway-restart,partition"]) == 2
    said = capsys.readouterr().err
    assert "gateway-restart cannot be injected with --gateway http://127.0.0.1:9" in said
    with pytest.raises(ValueError, match="broker-restart cannot be injected with --gateway"):
        FleetOptions(gateway="http://h:1", broker="mqtt://h:2", faults=("broker-restart",))
    with pytest.raises(ValueError, match=r"also needs --gateway-token-file, --trust, --topic-root"):
        FleetOptions(gateway="http://h:1", broker="mqtt://h:2")
    assert main([*shared, "--faults", "partition,agent-kill"]) == 2  # allowed, but no file
    assert "--gateway-token-file token: no such file" in capsys.readouterr().err
    assert [FleetOptions(households=2, shard=(k, 2)).launches_campaigns for k in (1, 2)] == [
        True,
        True,  # each shard's own gateway gets its launches
    ]
    assert [
        FleetOptions(
            households=2,
            shard=(k, 2),
            gateway="http://h:1",
            gateway_token_file=Path("t"),
            trust=Path("t"),
            broker="mqtt://h:2",
            topic_root="r/v1",
        ).launches_campaigns
        for k in (1, 2)
    ] == [True, False]  # a shared gateway's: once, by shard 1
