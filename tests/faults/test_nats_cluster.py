"""The broker tier Edgemart scales out on, with real processes: a 3-node NATS cluster
(JetStream, MQTT 3.1.1, stream and consumer replicas 3) where one node is SIGKILLed while
devices, catalogs, last wills and a QoS 1 stream cross it. docs/brokers.md keeps the figures.

The clients are plain aiomqtt (the agent's own multi-broker failover is tested with the agent):
what is proved here is what the broker cluster gives any MQTT 3.1.1 client.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import aiomqtt
import pytest

from mqttlink.errors import MqttLinkError
from mqttlink.session import on_session_lost, publish_acked
from simulators.nats import NatsCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FAILOVER_S = 20.0  # a node's death to a client's accepted session on another node
# A node's death to a granted QoS 1 SUBSCRIBE elsewhere when the dead node led the streams
# behind it: measured 4-15 s, and once over 20 s on an idle host (JetStream re-elects the
# stream's leader first).
RESUBSCRIBE_S = 45.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    started = time.monotonic()
    nats = NatsCluster(tmp_path_factory.mktemp("nats"))
    nats.start_all()
    print(f"\nnats cluster of 3 ready in {time.monotonic() - started:.1f} s")
    yield nats
    nats.stop()


@pytest.fixture
def nats(cluster: NatsCluster) -> Iterator[NatsCluster]:
    """The module's cluster, every node alive again after the test."""
    yield cluster
    for i in range(cluster.size):
        if not cluster.alive(i):
            cluster.start(i)


def _client(
    nats: NatsCluster, node: int, identifier: str, *, clean: bool = True, **kwargs: object
) -> aiomqtt.Client:
    client = aiomqtt.Client(
        "127.0.0.1",
        nats.mqtt_port(node),
        identifier=identifier,
        clean_session=clean,
        keepalive=5,
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )
    on_session_lost(client, None)
    return client


@contextlib.asynccontextmanager
async def connected(
    nats: NatsCluster,
    nodes: Sequence[int],
    identifier: str,
    *,
    clean: bool = True,
    within: float = FAILOVER_S,
    **kwargs: object,
) -> AsyncIterator[tuple[aiomqtt.Client, int]]:
    """A session on the first of `nodes` that accepts one, trying them in turn (a client
    with several broker URLs) until `within` seconds pass; yields the client and its node."""
    deadline = time.monotonic() + within
    while True:
        for node in nodes:
            if not nats.alive(node):
                continue
            client = _client(nats, node, identifier, clean=clean, **kwargs)
            try:
                await client.__aenter__()
            except aiomqtt.MqttError:
                continue
            try:
                yield client, node
            finally:
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no node of {list(nodes)} accepted {identifier} in {within} s")
        await asyncio.sleep(0.2)


async def subscribe_granted(client: aiomqtt.Client, topic: str, within: float = FAILOVER_S) -> int:
    """SUBSCRIBE at QoS 1 until the broker grants it; returns how many SUBACKs refused it.
    A NATS node refuses (0x80) while the JetStream consumer behind a QoS 1 subscription
    cannot be made, as for seconds after another node died: a client must retry."""
    deadline = time.monotonic() + within
    refused = 0
    while True:
        granted = await client.subscribe(topic, qos=1)
        if list(granted) == [1]:
            return refused
        refused += 1
        assert time.monotonic() < deadline, f"{topic}: SUBACK {granted} for {within} s"
        await asyncio.sleep(0.2)


async def collect(
    client: aiomqtt.Client,
    into: list[aiomqtt.Message],
    quiet_s: float,
    *,
    first_s: float | None = None,
) -> None:
    """Append messages until none came for `quiet_s` seconds or the session ended; the first
    may take up to `first_s` (a retained message another node replicates, on a loaded host)."""
    with contextlib.suppress(aiomqtt.MqttError):
        while True:
            try:
                async with asyncio.timeout(quiet_s if into or first_s is None else first_s):
                    into.append(await anext(aiter(client.messages)))
            except TimeoutError:
                return


async def publish_until_acked(
    nats: NatsCluster, nodes: Sequence[int], topics: Sequence[str], identifier: str
) -> int:
    """Publish each topic at QoS 1 (payload = its index) until acked, moving to the next node
    after a failure as a device does; returns how many attempts failed."""
    failed = 0
    pending = list(enumerate(topics))
    while pending:
        async with connected(nats, nodes, identifier) as (client, _node):
            while pending:
                index, topic = pending[0]
                try:
                    await publish_acked(client, topic, str(index).encode(), timeout=5)
                except MqttLinkError:
                    failed += 1
                    break
                pending.pop(0)
    return failed


async def test_a_device_session_survives_the_death_of_its_node(nats: NatsCluster) -> None:
    """Device d1 (persistent session, QoS 1 on its downlink) sits on node 0; node 0 is
    SIGKILLed; 50 commands are published on node 2 while d1 is away; d1 comes back on node 1
    with the same id, does not subscribe again, and gets all 50, each once."""
    device = "dev-d1"
    async with connected(nats, [0], device, clean=False) as (dev, _):
        await dev.subscribe("t/dev/d1/down/#", qos=1)
        await publish_until_acked(nats, [2], ["t/dev/d1/down/hello"], "cloud-hello")
        first: list[aiomqtt.Message] = []
        await collect(dev, first, quiet_s=1.0)
        assert [m.payload for m in first] == [b"0"]
        nats.kill(0)
        killed = time.monotonic()
    commands = [f"t/dev/d1/down/cmd/{k}" for k in range(50)]
    failed = await publish_until_acked(nats, [2], commands, "cloud-cmds")
    published = time.monotonic()
    async with connected(nats, [1], device, clean=False) as (dev, node):
        back = time.monotonic()
        got: list[aiomqtt.Message] = []
        # past the 2 s ack wait: redeliveries show. The first may wait for JetStream to
        # move the session's consumer off the dead node (once 4 s were not enough on a host
        # running other suites beside this one).
        await collect(dev, got, quiet_s=4.0, first_s=30.0)
    assert node == 1
    assert sorted(int(m.payload) for m in got) == list(range(50))
    assert len(got) == 50, "a command was delivered twice"
    assert {str(m.topic) for m in got} == set(commands)
    print(
        f"\nsession: 50 commands acked {published - killed:.2f} s after the kill "
        f"({failed} failed attempts), device back on node 1 {back - killed:.2f} s after it"
    )


async def test_a_retained_catalog_outlives_the_node_it_was_published_on(
    nats: NatsCluster,
) -> None:
    catalog = b'{"catalog": 7}'
    async with connected(nats, [1], "cloud-catalog") as (cloud, _):
        await publish_acked(cloud, "t/catalog/current", catalog, retain=True, timeout=5)

    refusals: list[int] = []

    async def read_catalog(node: int, name: str) -> aiomqtt.Message:
        # A node learns retained messages from a JetStream consumer on the retained stream,
        # and serves what it holds when a subscription starts: on a loaded host its consumer
        # can still be behind at the first subscribe (once nothing came in 15 s), so a reader
        # that got nothing subscribes once more, as a device reconnecting would.
        for attempt in (name, f"{name}-again"):
            async with connected(nats, [node], attempt) as (sub, _):
                refusals.append(await subscribe_granted(sub, "t/catalog/#", RESUBSCRIBE_S))
                got: list[aiomqtt.Message] = []
                await collect(sub, got, quiet_s=1.5, first_s=15.0)
            if got:
                break
        assert len(got) == 1, f"{name} on node {node}: {got}"
        return got[0]

    first = await read_catalog(2, "shop-a")
    assert (first.payload, first.retain) == (catalog, True)
    nats.kill(1)
    killed = time.monotonic()
    second = await read_catalog(2, "shop-b")
    assert (second.payload, second.retain) == (catalog, True)
    after_kill = time.monotonic() - killed
    await asyncio.to_thread(nats.start, 1)
    third = await read_catalog(1, "shop-c")
    assert (third.payload, third.retain) == (catalog, True)
    print(
        f"\nretained: catalog read on node 2 {after_kill:.2f} s after node 1 died; "
        f"refused SUBACKs per reader {refusals}"
    )


WILLED_DEVICE = """
import sys, time
import paho.mqtt.client as mqtt
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=sys.argv[2])
c.will_set("t/dev/d9/state", b"offline", qos=1)
c.connect("127.0.0.1", int(sys.argv[1]), keepalive=5)
c.loop_start()
while not c.is_connected():
    time.sleep(0.01)
print("connected", flush=True)
time.sleep(600)
"""


@contextlib.contextmanager
def willed_device(port: int, identifier: str) -> Iterator[subprocess.Popen[str]]:
    """A device process connected with a will on `port`; SIGKILLed at the latest on exit."""
    with subprocess.Popen(
        [sys.executable, "-c", WILLED_DEVICE, str(port), identifier],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "connected"
            yield proc
        finally:
            proc.kill()


async def test_a_last_will_is_lost_with_the_node_that_held_it(nats: NatsCluster) -> None:
    """NATS keeps a client's will in the memory of the node it is connected to and publishes
    it when that node sees the connection drop (nats-server 2.9 `mqttHandleWill`). A device
    process that dies: its will reaches a subscriber on another node. The node that dies:
    nobody is left to publish the will, so the device is never announced offline. The gateway
    must therefore treat "no birth or heartbeat within N" as offline, not rely on wills."""
    async with connected(nats, [1], "cloud-presence") as (watcher, _):
        await watcher.subscribe("t/dev/+/state", qos=1)
        with willed_device(nats.mqtt_port(0), "dev-d9") as device:
            device.kill()  # the device crashes; its node sees the socket close
        wills: list[aiomqtt.Message] = []
        await collect(watcher, wills, quiet_s=2.0)
        assert [(str(m.topic), m.payload) for m in wills] == [("t/dev/d9/state", b"offline")]

        with willed_device(nats.mqtt_port(0), "dev-d9"):
            nats.kill(0)  # the node crashes with the device still running
            lost: list[aiomqtt.Message] = []
            await collect(watcher, lost, quiet_s=8.0)  # > 1.5 x the device's 5 s keepalive
        assert lost == [], "a will was published after its node died: update docs/brokers.md"


async def test_nothing_acknowledged_is_lost_when_a_node_dies_mid_stream(
    nats: NatsCluster,
) -> None:
    """2,000 QoS 1 messages round-robin across the 3 nodes (a publisher per node, resending
    on the next node what was not acked); node 1 is SIGKILLed after 600 and restarted while
    the stream goes on. A persistent subscriber, first on node 1, reconnects to a live node
    and receives every acknowledged message: losses 0, duplicates counted."""
    total = 2_000
    acked: set[int] = set()
    received: list[int] = []
    seen: set[int] = set()
    failed = [0]
    refused = [0]
    stop = asyncio.Event()
    subscribed = asyncio.Event()
    halfway = asyncio.Event()  # 600 acked: time to kill a node
    published = asyncio.Event()
    caught_up = asyncio.Event()  # every acked message received
    reconnects: list[float] = []
    killed_at = [0.0]

    async def subscriber() -> None:
        order = [1, 2, 0]
        while not stop.is_set():
            async with connected(nats, order, "gw-sub", clean=False) as (sub, node):
                if killed_at[0]:
                    reconnects.append(time.monotonic() - killed_at[0])
                refused[0] += await subscribe_granted(sub, "t/up/#")
                subscribed.set()
                with contextlib.suppress(aiomqtt.MqttError):
                    async for message in sub.messages:
                        number = int(message.payload)
                        received.append(number)
                        seen.add(number)
                        if published.is_set() and acked <= seen:
                            caught_up.set()
                order = [n for n in order if n != node] + [node]

    async def publisher(lane: int) -> None:
        nodes = [lane, (lane + 1) % 3, (lane + 2) % 3]
        pending = list(range(lane, total, 3))
        while pending:
            async with connected(nats, nodes, f"pub-{lane}") as (client, _node):
                while pending:
                    try:
                        await publish_acked(
                            client, f"t/up/{pending[0]}", str(pending[0]).encode(), timeout=5
                        )
                    except MqttLinkError:
                        failed[0] += 1
                        break
                    acked.add(pending.pop(0))
                    if len(acked) >= 600:
                        halfway.set()

    async def fault() -> None:
        await halfway.wait()
        nats.kill(1)
        killed_at[0] = time.monotonic()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(nats.start, 1)

    started = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        sub_task = tasks.create_task(subscriber(), name="nats-subscriber")
        await subscribed.wait()  # the session's subscription exists before the first message
        tasks.create_task(fault(), name="nats-fault")
        await asyncio.gather(*(publisher(lane) for lane in range(3)))
        published.set()
        publishing_s = time.monotonic() - started
        if acked <= seen:
            caught_up.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await caught_up.wait()
        await asyncio.sleep(3.0)  # past the 2 s ack wait: late redeliveries are counted
        stop.set()
        sub_task.cancel()
    lost = acked - set(received)
    duplicates = len(received) - len(set(received))
    print(
        f"\nstream: {total} published, {len(acked)} acked, {failed[0]} failed attempts, "
        f"{len(received)} received, {len(lost)} lost, {duplicates} duplicates; "
        f"{refused[0]} refused SUBACKs; "
        f"publishing {publishing_s:.1f} s; subscriber back "
        f"{', '.join(f'{s:.2f}' for s in reconnects)} s after the kill"
    )
    assert len(acked) == total
    assert lost == set()
    assert set(received) <= set(range(total))
    assert reconnects, "the subscriber never had to reconnect: node 1 was not its node"


async def test_what_nats_mqtt_does_not_offer_edgemart(nats: NatsCluster) -> None:
    """The limits docs/brokers.md builds on (nats-server 2.9): no MQTT 5 (so no clean start
    and session expiry), no `$share` groups (the filter is granted but matches only its
    literal topic, so a gateway group would silently receive nothing), no QoS 2 publish."""
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", nats.mqtt_port(0), protocol=aiomqtt.ProtocolVersion.V5, timeout=5
        ):
            pass
    async with (
        connected(nats, [1], "gw-share") as (shared, _),
        connected(nats, [2], "gw-plain") as (plain, _),
    ):
        await subscribe_granted(shared, "$share/gateway/t/up/#")
        await subscribe_granted(plain, "t/up/#")
        await publish_until_acked(nats, [0], [f"t/up/{k}" for k in range(5)], "dev-share")
        via_share: list[aiomqtt.Message] = []
        via_plain: list[aiomqtt.Message] = []
        await asyncio.gather(
            collect(shared, via_share, quiet_s=1.5), collect(plain, via_plain, quiet_s=1.5)
        )
    assert (len(via_share), len(via_plain)) == (0, 5)
    async with connected(nats, [0], "dev-qos2") as (device, _):
        with pytest.raises(MqttLinkError):
            await publish_acked(device, "t/up/q2", b"x", qos=2, timeout=3)
