"""Finding the household on the LAN with python-zeroconf's asyncio API: advertise this device
as `_edgemart._tcp.local.` and browse for the others.

TXT records carry no personal data: `v` (protocol version), `role`, `hh` (the household hint,
a keyed hash), `fp` (the LAN key's fingerprint) and `proof` (a keyed hash binding fp, role
and port to the household secret). An advert with another household's hint is ignored
(`household_adverts_foreign`); one with our hint and a wrong proof, or malformed, is refused
(`household_adverts_refused`): neither gets a connection. Peers are bounded (`max_peers`),
and so are the resolutions in flight. Goodbyes and TTL expiry remove a peer; `on_change` then
lets the client re-elect."""

from __future__ import annotations

import asyncio
import hmac
import logging
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from zeroconf import Error as ZeroconfError
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.household.election import Candidate
from agent.household.membership import Credentials
from protocol.household import MEMBER_ROLES, advert_proof

log = logging.getLogger(__name__)
SERVICE_TYPE = "_edgemart._tcp.local."
TXT_VERSION = "1"
MAX_PEERS = 32
MAX_RESOLVING = 8
RESOLVE_TIMEOUT_MS = 3000
ADVERT_TTL_S = 120
"""Records' time to live: a device that vanished without a goodbye (killed, unplugged) is
forgotten by its peers' caches after this long."""


@dataclass(frozen=True, slots=True)
class Advert:
    """One parsed advertisement (not yet checked against our household)."""

    name: str
    role: str
    hint: str
    fingerprint: str
    proof: str
    host: str
    port: int


def _text(props: Mapping[bytes, bytes | None], key: bytes, limit: int) -> str | None:
    value = props.get(key)
    if value is None or len(value) > limit:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_advert(
    name: str, props: Mapping[bytes, bytes | None], addresses: Sequence[str], port: int | None
) -> Advert | None:
    """A peer's TXT and address as an Advert, or None when anything is malformed (pure: a
    hostile record yields None, never an exception)."""
    if _text(props, b"v", 4) != TXT_VERSION or not addresses or not port:
        return None
    role = _text(props, b"role", 16)
    hint = _text(props, b"hh", 16)
    fp = _text(props, b"fp", 32)
    proof = _text(props, b"proof", 32)
    if role not in MEMBER_ROLES or hint is None or fp is None or proof is None:
        return None
    if len(fp) != 32 or any(c not in "0123456789abcdef" for c in fp):
        return None
    return Advert(name, role, hint, fp, proof, addresses[0], port)


class Discovery:
    """`await start()`, then `candidates()` is this household's verified adverts (self
    included); `await close()` says goodbye."""

    def __init__(
        self,
        creds: Credentials,
        port: int,
        *,
        interfaces: Sequence[str] = ("127.0.0.1",),
        host: str = "127.0.0.1",
        on_change: Callable[[], None] = lambda: None,
        on_seen: Callable[[str], None] = lambda _fp: None,
        counters: Counter[str] | None = None,
        max_peers: int = MAX_PEERS,
        ttl_s: int = ADVERT_TTL_S,
    ) -> None:
        self.creds = creds
        self.port = port
        self.host = host
        self.interfaces = list(interfaces)
        self.on_change = on_change
        self.on_seen = on_seen
        self.counters = counters if counters is not None else Counter()
        self.max_peers = max_peers
        self.ttl_s = ttl_s
        self.peers: dict[str, Candidate] = {}
        self._names: dict[str, str] = {}  # service name -> fingerprint
        self._resolving: set[asyncio.Task[None]] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registering: asyncio.Task[None] | None = None
        self.advertised = False
        self.me = Candidate(creds.fingerprint, creds.role, host, port)

    @property
    def name(self) -> str:
        return f"{self.creds.fingerprint}.{SERVICE_TYPE}"

    async def start(self) -> None:
        self._zc = AsyncZeroconf(interfaces=self.interfaces, ip_version=IPVersion.V4Only)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            self.name,
            addresses=[socket.inet_aton(self.host)],
            port=self.port,
            host_ttl=self.ttl_s,
            other_ttl=self.ttl_s,
            properties={
                "v": TXT_VERSION,
                "role": self.creds.role,
                "hh": self.creds.hint,
                "fp": self.creds.fingerprint,
                "proof": self.creds.proof(self.port),
            },
        )
        self._browser = AsyncServiceBrowser(
            self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state]
        )
        # probing our name takes about a second: browse (and join) meanwhile
        self._registering = asyncio.get_running_loop().create_task(
            self._register(self._zc, self._info), name="household-advertise"
        )

    async def _register(self, zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        announced = await zc.async_register_service(info)
        await announced
        self.advertised = True

    async def close(self) -> None:
        for task in list(self._resolving):
            task.cancel()
        registering, self._registering = self._registering, None
        if registering is not None:
            registering.cancel()
            try:
                await registering
            except asyncio.CancelledError:
                pass
            except ZeroconfError as exc:
                log.warning("advertising %s failed: %s", self.name, exc)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None and self.advertised:
                await self._zc.async_unregister_service(self._info)  # the goodbye
            await self._zc.async_close()
        self._zc = self._browser = self._info = None

    def candidates(self) -> list[Candidate]:
        return [self.me, *self.peers.values()]

    def _on_state(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if name == self.name:
            return
        if state_change is ServiceStateChange.Removed:
            fp = self._names.pop(name, None)
            if fp is not None and self.peers.pop(fp, None) is not None:
                log.info("household peer %s left", fp)
                self.on_change()
            return
        if len(self._resolving) >= MAX_RESOLVING:
            self.counters["household_resolves_dropped"] += 1
            return
        task = asyncio.get_running_loop().create_task(
            self._resolve(name), name=f"household-resolve-{name[:40]}"
        )
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, name: str) -> None:
        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            found = await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS)
        except ZeroconfError as exc:  # closing under it (NotRunningException)
            log.debug("resolving %s: %r", name, exc)
            return
        if not found:
            self.counters["household_resolves_failed"] += 1
            return
        advert = parse_advert(name, info.properties, info.parsed_addresses(), info.port)
        self.admit(advert)

    def admit(self, advert: Advert | None) -> bool:
        """Check one advert against our household; True when it joined the peers."""
        if advert is None:
            self.counters["household_adverts_refused"] += 1
            return False
        if not hmac.compare_digest(advert.hint, self.creds.hint):
            self.counters["household_adverts_foreign"] += 1
            return False
        expected = advert_proof(self.creds.secret, advert.fingerprint, advert.role, advert.port)
        if not hmac.compare_digest(advert.proof, expected):
            self.counters["household_adverts_refused"] += 1
            log.warning("refused an advert for our household without a valid proof: %s", advert)
            return False
        if advert.fingerprint not in self.peers and len(self.peers) >= self.max_peers:
            self.counters["household_peers_dropped"] += 1
            return False
        peer = Candidate(advert.fingerprint, advert.role, advert.host, advert.port)
        old = self.peers.get(advert.fingerprint)
        self.peers[advert.fingerprint] = peer
        self._names[advert.name] = advert.fingerprint
        if old != peer:
            self.on_change()
        self.on_seen(advert.fingerprint)
        return True
