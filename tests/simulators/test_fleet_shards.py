"""The arithmetic of `--shard K/N`, `edgemart fleet merge` and the worker processes' file
descriptors (no process started)."""

from __future__ import annotations

import resource
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
