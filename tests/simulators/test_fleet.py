"""`edgemart fleet`: many households of real agents against one gateway, faults injected in
the middle of the run, and every accepted signal accounted for."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from simulators.brokers import MosquittoProcess
from simulators.fleet import run_fleet, succeeded
from simulators.options import FleetOptions, fresh_root, sweepable
from simulators.retained import retained_topics
from tests.support.processes import EDGEMART

pytestmark = pytest.mark.integration


async def test_a_fleet_through_every_fault_on_a_private_mosquitto(tmp_path: Path) -> None:
    options = FleetOptions(
        households=1,
        broker="mosquitto",
        rounds=9,
        signals_per_round=10,
        duration_s=6.0,
        faults=("partition", "gateway-restart", "broker-restart", "agent-kill"),
        crash_devices=1,
        data_dir=tmp_path,
        drain_timeout=60.0,
    )
    report = await run_fleet(options)
    assert succeeded(report), report
    # the household's 4 devices in all 9 rounds; the crash TV misses the round it is down
    accepted = 4 * 9 * 10 + 1 * 8 * 10
    assert report["devices"] == 5
    assert report["signals_accepted"] == accepted
    assert report["signals_stored"] + report["signals_in_aggregates"] == accepted
    assert report["signals_lost"] == report["signals_duplicated"] == 0
    # every in-process device lost its session when Mosquitto was killed, and came back
    assert report["device_reconnects"] >= 4
    events = [(e["fault"], e["event"]) for e in report["faults"]]
    assert events == [
        ("gateway-restart", "begins"),
        ("broker-restart", "begins"),
        ("partition", "begins"),
        ("agent-kill", "begins"),
        ("agent-kill", "ends"),
        ("partition", "ends"),
        ("broker-restart", "ends"),
        ("gateway-restart", "ends"),
    ]
    # what devices sent while the gateway was down, the broker queued for it; whatever the
    # kill cost of that came in only because devices send again until the gateway's ack.
    # Resends wait for the ack timeout (backed off, learnt from ack latency) or a reconnect:
    # when the restarted broker kept the queue and the acks were waiting for the devices'
    # sessions, none is needed (0 or 1 here), and never a storm.
    assert report["batches_resent"] <= 5 * report["devices"]


async def test_a_fleet_on_the_lan_two_homes_apart_coordinators_killed_and_spoofed(
    tmp_path: Path,
) -> None:
    """`--lan`: each household's devices find each other by real mDNS on loopback, with
    memberships the gateway issued; two homes on one segment each elect their own hub, see
    the other's adverts only as foreign (counted) and share nothing with it. With
    `coordinator-kill` both hubs stop as killed processes would (no goodbye): another device of
    each home takes over, and the hubs come back as coordinators. With `coordinator-spoof`
    (while the hubs are down: the rogue hubs would win the election) a rogue hub with the
    leaked household secret but a forged membership joins each home: refused by the
    handshake, it gets nobody. No signal lost."""
    options = FleetOptions(
        households=2,
        broker="mosquitto",
        rounds=9,
        signals_per_round=5,
        duration_s=9.0,
        data_dir=tmp_path,
        lan=True,
        faults=("coordinator-kill", "coordinator-spoof"),
    )
    report = await run_fleet(options)
    assert succeeded(report), report
    lan = report["lan"]
    assert lan["households"] == lan["settled"] == lan["coordinated"] == 2
    homes = {h["household_id"]: h for h in lan["per_household"]}
    assert len(homes) == 2
    assert sorted(lan["coordinators_killed"]) == sorted(f"{h}-hub" for h in homes)
    # while its hub was down, a device of the same home coordinated it
    interim = lan["coordinators_interim"]
    assert len(interim) == 2 and not any(d.endswith("-hub") for d in interim)
    assert {h for h in homes for d in interim if d.startswith(f"{h}-")} == set(homes)
    for household_id, home in homes.items():
        assert home["coordinator"] == f"{household_id}-hub"  # back, and elected again
        # the caps it enforces: no cloud household section in this run, the defaults, in the
        # hub's local time (Asia/Shanghai): its agent's policy, read by its coordinator
        assert home["caps"] == {
            "offer_window_s": 4 * 3600.0,
            "per_day": 24,
            "quiet": [],
            "utc_offset_s": 8 * 3600.0,
        }
        assert home["active_devices"] == 4  # its own four devices, none of the other home
        assert home["counters"]["household_adverts_foreign"] > 0  # it saw the other home
    assert sorted(lan["rogues"]) == sorted(f"{h}-rogue" for h in homes)
    got = {"rogue_members_seen": 0, "rogue_contributions": 0, "rogue_exposures": 0}
    assert lan["rogues_got"] == got  # zero connections beyond the handshake, zero data
    assert lan["counters"]["household_coordinators_refused"] >= 2  # each home refused its rogue
    events = [(e["fault"], e["event"]) for e in report["faults"]]
    assert events == [
        ("coordinator-kill", "begins"),
        ("coordinator-spoof", "begins"),
        ("coordinator-spoof", "ends"),
        ("coordinator-kill", "ends"),
    ]
    assert report["signals_lost"] == report["signals_duplicated"] == 0


def test_fleet_options_refuse_what_cannot_be_run() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        FleetOptions(faults=("flood",))
    with pytest.raises(ValueError, match="coordinator-kill needs --lan"):
        FleetOptions(faults=("coordinator-kill",))
    with pytest.raises(ValueError, match="crash device"):
        FleetOptions(faults=("agent-kill",), crash_devices=0)
    with pytest.raises(ValueError, match="a broker this run starts"):
        FleetOptions(broker="mqtt://127.0.0.1:1883", faults=("broker-restart",))
    FleetOptions(broker="mosquitto", faults=("broker-restart",))


def test_the_cli_on_the_embedded_broker_writes_the_report_and_says_ok(tmp_path: Path) -> None:
    report_path = tmp_path / "fleet.json"
    args = [
        *EDGEMART,
        *("fleet", "--households", "1", "--rounds", "3", "--duration", "3"),
        *("--faults", "partition,gateway-restart"),
        *("--report", str(report_path), "--data-dir", str(tmp_path / "data")),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK" in done.stdout
    report = json.loads(report_path.read_text())
    assert report["broker"] == "embedded amqtt"
    assert report["signals_lost"] == 0
    assert report["signals_accepted"] == 4 * 3 * 20
    bad = subprocess.run(
        [*EDGEMART, "fleet", "--faults", "flood"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "unknown fault(s) ['flood']" in bad.stderr


async def test_a_fleet_on_an_outside_broker_keeps_to_its_own_root_and_clears_it(
    tmp_path: Path, own_mosquitto: MosquittoProcess
) -> None:
    """On a broker this run does not own, the fleet uses a fresh topic root and leaves no
    retained message there (births, wills, catalogs, key list) when it ends."""
    options = FleetOptions(
        households=1,
        broker=own_mosquitto.url,
        rounds=3,
        signals_per_round=5,
        duration_s=1.0,
        data_dir=tmp_path,
    )
    report = await run_fleet(options)
    assert succeeded(report), report
    root = report["topic_root"]
    assert root.startswith("edgemart-qa/fleet-")
    assert await retained_topics(own_mosquitto.url, root) == []
    assert await retained_topics(own_mosquitto.url, "edgemart/v1") == []


def test_only_a_qa_root_is_swept() -> None:
    assert sweepable(fresh_root("demo")) and sweepable("edgemart-qa/mine/v1")
    assert not sweepable("edgemart/v1")  # the real daemons' root: never cleared by a QA run
    assert not sweepable("edgemart-qa")
    assert fresh_root("fleet") != fresh_root("fleet")
