"""What `edgemart demo` and `edgemart fleet` take (plain dataclasses, light to import), and the
fresh topic root each run uses so it never touches what a real gateway and its devices hold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from protocol.ids import new_id

FAULTS = (
    "gateway-restart",
    "broker-restart",
    "partition",
    "agent-kill",
    "coordinator-kill",
    "coordinator-spoof",
)
"""In the order they begin."""
HOUSEHOLD_PROFILES = ("hub", "tv", "phone", "phone")
"""Today's household (`simulators.household.default_devices`)."""
PACES = ("stress", "world")
"""`stress`: `signals_per_round` per device and round; `world`: the synthetic world's own
daily rate per device (`simulators.pace`), `compress` times faster than real time."""

QA_ROOT_PREFIX = "edgemart-qa"


def fresh_root(run: str) -> str:
    """A topic root of this run's own, `edgemart-qa/<run>-<12 hex>/v1`: nothing a real gateway
    or device subscribes to, and everything the run left behind is under it."""
    return f"{QA_ROOT_PREFIX}/{run}-{new_id().replace('-', '')[-12:]}/v1"


def sweepable(root: str) -> bool:
    """True for a QA run's own root (`fresh_root`'s form): what is retained under it may be
    cleared at the end. Any other root given with `--topic-root` may hold what real daemons
    published, so a run leaves it as it is."""
    return root.startswith(QA_ROOT_PREFIX + "/")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    broker: str | None = None
    data_dir: Path | None = None
    seed: int = 7
    household: int = 5
    """The persona: 5 owns a purifier whose filter runs low and a TV (the purifier→TV story)."""
    signals_per_device: int | None = None  # None: a week at the persona's own rate
    live_signals_per_device: int = 150
    history: timedelta = timedelta(days=7) - timedelta(minutes=5)
    browse_rounds: int = 40
    drain_timeout: float = 20.0
    topic_root: str | None = None
    """None: a fresh root (`fresh_root`), cleared of its retained messages at the end (as is
    any root under `edgemart-qa/`; `sweepable`)."""
    lan: bool = True
    """The household's devices and appliances on the loopback LAN (issue 17): memberships
    from the gateway, real mDNS, the purifier's filter level reaching the TV through the
    coordinator, household caps."""


@dataclass(frozen=True, slots=True)
class FleetOptions:
    households: int = 3
    """Each household is a hub, a TV and two phones (`simulators.household`)."""
    broker: str | None = None
    """mqtt://HOST:PORT of a running broker; None: an embedded amqtt broker; "mosquitto": a
    private Mosquitto process on a free port (the binary must be installed)."""
    data_dir: Path | None = None
    seed: int = 11
    rounds: int = 9
    signals_per_round: int = 20
    """Per device and round; the rounds are spread over `duration_s`."""
    duration_s: float = 12.0
    faults: tuple[str, ...] = ()
    crash_devices: int = 2
    """With `agent-kill`: how many TVs run as their own processes, to be killed."""
    drain_timeout: float = 90.0
    topic_root: str | None = None
    """None: a fresh root (`fresh_root`), cleared of its retained messages at the end (as is
    any root under `edgemart-qa/`; `sweepable`)."""
    ramp: float | None = None
    """Devices started (and stopped) per second, households concurrently; None: as fast as
    `STARTING_AT_ONCE` households at a time allow."""
    pace: str = "stress"
    """One of `PACES`."""
    compress: float = 1440.0
    """With `pace="world"`: simulated seconds per real second (1440: a day a minute)."""
    profiles: tuple[str, ...] = HOUSEHOLD_PROFILES
    """The devices of every household, by firmware profile."""
    consent_shares: tuple[tuple[str, float], ...] = ()
    """(purpose, share of devices granting it), drawn per device from the seed; empty:
    today's household (everything granted, the second phone without personalization)."""
    fault_times: tuple[tuple[str, float, float], ...] = ()
    """(fault, begins at s, lasts s), in seconds from the first usage round; empty: the
    round plan (`faults` in the middle third). When given, it names the faults."""
    world_households: int | None = None
    """The households are drawn at random (from the seed, none twice) from a synthetic world
    of this many personas; None: the world's first households, in order."""
    campaigns: tuple[tuple[float, int], ...] = ()
    """(at s from the first usage round, how many of the world's sample campaigns)."""
    progress: bool = False
    """A live progress display (rich) on stdout."""
    group_buys: tuple[int, float, bool] | None = None
    """(group size, window s, wait for the window to close): after the usage rounds,
    households start group buys and their friends in the fleet join with the shared code
    (`simulators.fleet_social`); None: none."""

    procs: int | None = None
    """Agent worker processes; None: one per core (`os.cpu_count()`), more when one
    process's file-descriptor limit cannot hold its share (`simulators.fdlimit`)."""
    shard: tuple[int, int] | None = None
    """(K, N): run the K-th of N deterministic slices of the fleet (household i when
    i % N == K - 1; the crash TVs in slice 1), so N runs of the same seed together are the
    unsharded fleet; `edgemart fleet merge` sums their reports."""
    gateway: str | None = None
    """http://HOST:PORT of a running `edgemart gateway run` this run uses instead of starting
    its own (`--gateway`: the shards of a fleet on several machines against one gateway); it
    needs `gateway_token_file`, `trust`, `broker` (the gateway's broker URL) and `topic_root`
    (the gateway's root)."""
    gateway_token_file: Path | None = None
    """With `gateway`: a file holding an operator token of it (`edgemart gateway token
    create`): campaigns are launched and the devices' exports read with it."""
    trust: Path | None = None
    """With `gateway`: its trust file (`trust.json` in its data folder), given to every
    device."""
    lan: bool = False
    """Each household's devices on the loopback LAN as in the demo
    (`simulators.household_lan.HouseholdLan`): memberships issued by the gateway's API, real
    mDNS discovery and election, appliances reporting to the coordinator (issue 17)."""

    @property
    def devices(self) -> int:
        """Devices of this run (its shard), crash TVs not counted."""
        return len(self.shard_households()) * len(self.profiles)

    def shard_households(self) -> list[int]:
        if self.shard is None:
            return list(range(self.households))
        k, n = self.shard
        return [i for i in range(self.households) if i % n == k - 1]

    @property
    def shard_label(self) -> str | None:
        return None if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"

    @property
    def launches_campaigns(self) -> bool:
        """A shared gateway's campaigns are launched once for the fleet, by shard 1 (whose
        devices' launch-to-offer latencies the report then gives); a gateway of the run's own
        gets its shard's launches."""
        return self.gateway is None or self.runs_crash_devices

    @property
    def runs_crash_devices(self) -> bool:
        """The crash TVs run in the first slice only (their ids are not per shard)."""
        return self.shard is None or self.shard[0] == 1

    def __post_init__(self) -> None:
        if self.ramp is not None and not self.ramp > 0:
            raise ValueError(
                f"--ramp must be a positive number of devices per second, not {self.ramp}"
            )
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s) {sorted(unknown)}; known: {', '.join(FAULTS)}")
        if self.gateway is not None:
            self._check_shared_gateway()
        if "broker-restart" in self.faults and self.broker not in (None, "mosquitto"):
            raise ValueError("broker-restart needs a broker this run starts (embedded, mosquitto)")
        for fault in ("coordinator-kill", "coordinator-spoof"):
            if fault in self.faults and not self.lan:
                raise ValueError(f"{fault} needs --lan (households on the LAN)")
        if "agent-kill" in self.faults and self.crash_devices < 1:
            raise ValueError("agent-kill needs at least one crash device")
        if self.procs is not None and self.procs < 1:
            raise ValueError(f"--procs must be at least 1, not {self.procs}")
        if self.shard is not None:
            k, n = self.shard
            if not 1 <= k <= n:
                raise ValueError(f"--shard K/N needs 1 <= K <= N, not {k}/{n}")
            if not self.shard_households():
                raise ValueError(f"shard {k}/{n} of {self.households} households is empty")
        if self.households < 1 or self.rounds < 3:
            raise ValueError("need at least 1 household and 3 rounds")
        if self.pace not in PACES:
            raise ValueError(f"--pace must be one of {', '.join(PACES)}, not {self.pace!r}")
        if not self.compress > 0:
            raise ValueError(f"--compress must be positive, not {self.compress}")
        if not self.profiles:
            raise ValueError("a household needs at least one device profile")
        from protocol.vocabulary import PROFILES  # noqa: PLC0415 - `--help` stays light

        if unknown_profiles := sorted(set(self.profiles) - set(PROFILES)):
            raise ValueError(f"unknown profile(s) {unknown_profiles}; known: {', '.join(PROFILES)}")
        if self.world_households is not None and self.world_households <= self.households:
            raise ValueError(
                f"world_households ({self.world_households}) must exceed households"
                f" ({self.households}): one persona is kept for the crash devices"
            )
        if self.group_buys is not None:
            size, window, _ = self.group_buys
            if not 2 <= size <= 10 or not 60 <= window <= 86400:
                raise ValueError(
                    f"group_buys: size 2..10 and a window 60..86400 s, not {size}, {window}"
                )
            if self.shard is not None or self.gateway is not None:
                raise ValueError("group_buys needs an unsharded fleet with its own gateway")
        if self.fault_times and {f for f, _, _ in self.fault_times} != set(self.faults):
            raise ValueError("fault_times must name exactly the faults of the run")

    def _check_shared_gateway(self) -> None:
        owned = [f for f in ("gateway-restart", "broker-restart") if f in self.faults]
        if owned:
            raise ValueError(
                f"{', '.join(owned)} cannot be injected with --gateway {self.gateway}: a shared"
                " gateway and its broker are not this run's to restart (partition and"
                " agent-kill touch only this run's devices and can be)"
            )
        missing = [
            flag
            for flag, value in (
                ("--gateway-token-file", self.gateway_token_file),
                ("--trust", self.trust),
                ("--topic-root (the gateway's)", self.topic_root),
            )
            if value is None
        ]
        if self.broker in (None, "mosquitto"):
            missing.append("--broker mqtt://HOST:PORT (the gateway's broker)")
        if missing:
            raise ValueError(f"--gateway {self.gateway} also needs {', '.join(missing)}")


FLEET_GUIDE = """\
A QA run of many simulated households against one gateway, with faults, ending in the loss
accounting of every device.

Every device is the real agent (in one of --procs worker processes, on its own SQLite
files), the gateway is the real `edgemart gateway run` process, every signal goes through the
broker to the gateway and is checked against its export. Faults begin in the
middle third of the run, one a round in this order, while the households keep using their
devices, and all end with it:

- `gateway-restart`: the gateway process is killed (SIGKILL) and started again on the same
  data; the broker queues what devices send for its session meanwhile;
- `broker-restart`: the broker this run started goes down and comes back on the same port:
  the embedded amqtt broker stops, losing what it held in memory (sessions, the queue kept
  for the stopped gateway); a private Mosquitto (`broker="mosquitto"`) is killed with
  SIGKILL and restarts from its persistence file, losing what it had not saved yet. Devices
  send again what the gateway never acknowledged. (Not with a broker URL: a broker this run
  does not own cannot be restarted by it.)
- `partition`: the devices' network goes dark without closing a socket (a dead Wi-Fi link;
  `simulators.netfault.PartitionProxy` between every device and the broker), then comes back;
- `agent-kill`: the fleet also runs `crash_devices` TVs as real `edgemart agent run`
  processes, fed over their local HTTP API; they are killed with SIGKILL (a power cut: only
  what is on disk survives) and started again on the same data.

It runs under a topic root of its own (a fresh one unless --topic-root is given), so on a
broker a real gateway uses it reaches none of the real devices, and it clears the retained
messages it left there when it ends.

The verdict (`succeeded`): no accepted signal lost, none stored twice, nothing unexpected,
every device drained. A device that did not drain in time still holds what it did not send:
that is reported as undelivered (which devices, how many signals, why: its link, its budget,
its consent, a full disk, batches unacked), never as lost.

A scenario file (`--scenario FILE`, TOML; `simulators/scenarios/`) sets the size, the mix
of profiles, personas and consent, the ramp, the pace (`stress`, or `world`: each device's
own daily rate in the synthetic world, `--compress` times faster), campaigns to launch and
faults with their times, and the seed; flags win over it. A live progress table shows on a
terminal (or with `--progress`); `--html FILE` writes the report with its charts.

Every simulated agent has its own SQLite file, outbox, keys and MQTT session; the agents run
in worker processes (`--procs`, default one per core), the stores of one worker sharing a
pool of 4 threads (`agent.store.thread.StorePool`), and the gateway runs as its own process
(`edgemart gateway run`; `gateway-restart` kills it with SIGKILL). Each process raises its
own open-files limit to what its share needs, or the run refuses up front with the
arithmetic. `--shard K/N` runs one slice of the fleet (also of a scenario: the same seeded
draws); `edgemart fleet merge REPORT...` sums the slices' reports and loss accounting.

Many machines, one gateway: `--gateway http://HOST:PORT --gateway-token-file FILE --trust
FILE --broker mqtt://HOST:PORT --topic-root ROOT` uses a gateway that already runs (with
that broker and root) instead of starting one, so the `--shard K/N` runs of N machines all
talk to it. Shard 1 launches the campaigns, once for the fleet; each shard checks the exports
of its own devices only (their ids come from the seed and the shard) and leaves the retained
messages alone. `gateway-restart` and `broker-restart` are refused (not this run's to
restart); `partition` and `agent-kill` touch only the run's own devices.
"""


@dataclass(frozen=True, slots=True)
class LiftOptions:
    """One lift run: the world, how long, how often devices are looked at, the rule."""

    seed: int = 7
    households: int = 300
    days: int = 7
    sessions_per_day: float = 6.0
    """Moments a day each device could show an offer (drawn around the household's hours)."""
    min_score: float = 0.3
    """`decisions.min_score` of the model arms (a click probability)."""
    holdout: float = 0.1
    """Every campaign's holdout share: what the uplift is measured against."""
    offers: int = 64
    slots: int = 1
    """Offers one session shows at most (the decision's `limit`)."""
    work_dir: Path | None = None
    """Where the retrained model and its logs go (None: a temporary folder)."""

    def __post_init__(self) -> None:
        for name in ("households", "days", "offers", "slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], not {self.min_score}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), not {self.holdout}")
        if not 0.0 < self.sessions_per_day <= 200.0:
            raise ValueError(f"sessions_per_day must be in (0, 200], not {self.sessions_per_day}")
