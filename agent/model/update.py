"""Model updates on the device: check a signed manifest, download, health-check, swap atomically.

A manifest from `models/{profile}/manifest` is refused (counted as
`model_update_refused_<reason>`, reported in `state`, the running model untouched) when it
is oversized, malformed (including nested past `protocol.codec.MAX_DEPTH`), unsigned, badly
signed, expired, for another profile, older than the running model (rollback), or when its
file is oversized, truncated, tampered, slow past the deadline, or fails the health check
(loads, spec served, finite scores, scoring latency within the profile's budget). A device
outside the manifest's target cohorts or the rollout percentage waits. Fields a newer
gateway added are covered by the signature, ignored and counted (`agent.link.downlink`); the
signed manifest is kept on disk as received.

Rollout health goes back to the gateway in the retained `state` (`model_update`: version,
`applied` | `failed` | `rolled_back`, reason): a model refused after download (tampered,
oversized, health check, too slow) is `failed`; one that fails at run time after the swap is
`rolled_back`: the agent returns to its last good model (`ModelUpdater.rolled_back`). Such a
refusal is remembered by version and sha256 (`status.json`, bounded), so the same retained
manifest is not downloaded again on every reconnect.

The model directory on disk (durable writes, the `current` pointer, the remembered refusals)
is `agent.model.files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ModelRejected
from agent.link.downlink import UnknownFields
from agent.model.files import Refusals, install, load_status, point_to, revert, save_status
from agent.model.scoring import Model, load_model
from agent.runtime.metrics import Metrics
from protocol import codec
from protocol.assign import in_rollout
from protocol.envelopes import ModelManifest, ModelUpdateReport
from protocol.errors import ProtocolError, SignatureError
from protocol.ids import utcnow
from protocol.signing import Verifier

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 256 * 1024
CHUNK = 64 * 1024
MAX_REMEMBERED = 32
FILE_FAULTS = frozenset({"tampered", "oversized", "health_failed", "too_slow"})
"""Refusals the file itself causes (not the channel): reported as `failed`, remembered."""
RUNTIME_FAILED = "runtime_failed"


class UpdateRefused(Exception):
    """One reason (a counter suffix) and a message saying what and where."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    device_id: str
    profile: str
    models_dir: Path
    scoring_budget_ms: float
    candidates: int
    download_timeout_s: float = 60.0
    cohorts: tuple[str, ...] = ()
    """The device's cohorts (`profile:tv`, `region:cn-east`...), matched to a manifest's."""
    serves_models: bool = True
    """False on a thin device (`ranking = "thin"`): manifests are counted and ignored."""


def rollout_key(manifest: ModelManifest) -> str:
    """The salt of a model's staged rollout: the same devices at every percentage step."""
    return f"model:{manifest.name}:{manifest.version}"


# ------------------------------------------------------------------ checks


def check_manifest(
    payload: bytes, verifier: Verifier, config: UpdateConfig, running: int | None
) -> tuple[ModelManifest, tuple[str, ...]]:
    """The manifest if this device should fetch it, with the paths of the fields it carries
    that this build does not know (ignored); UpdateRefused otherwise."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise UpdateRefused("oversized_manifest", f"manifest: {len(payload)} bytes")
    try:
        obj = codec.decode_object(payload, max_compressed=MAX_MANIFEST_BYTES)
    except ProtocolError as exc:
        raise UpdateRefused("malformed", f"manifest: {exc}") from exc
    if not isinstance(obj.get("kid"), str) or not isinstance(obj.get("sig"), str):
        raise UpdateRefused("unsigned", "manifest: kid and sig are required")
    try:
        verifier.verify(obj, role="models")
    except SignatureError as exc:
        reason = "expired" if "expired" in str(exc) else "bad_signature"
        raise UpdateRefused(reason, f"manifest: {exc}") from exc
    try:
        manifest, unknown = codec.validate_tolerant(obj, ModelManifest)
    except ProtocolError as exc:
        raise UpdateRefused("malformed", f"manifest: {exc}") from exc
    where = f"manifest v{manifest.version}"
    if config.profile not in manifest.profiles:
        raise UpdateRefused(
            "wrong_profile", f"{where}: for {manifest.profiles}, this is a {config.profile}"
        )
    if running is not None and manifest.version < running:
        raise UpdateRefused("rollback", f"{where}: older than the running v{running}")
    if manifest.url is None:
        raise UpdateRefused("malformed", f"{where}: no url to fetch the model from")
    return manifest, unknown


async def download(manifest: ModelManifest, timeout_s: float) -> bytes:
    """The file at `manifest.url`, at most `manifest.size` bytes, matching its sha256."""
    import aiohttp  # noqa: PLC0415 - lazy: 13 MB a thin device (no model) never needs

    where = f"model v{manifest.version} from {manifest.url}"
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    size = 0
    try:
        async with (
            asyncio.timeout(timeout_s),
            aiohttp.ClientSession() as http,
            http.get(str(manifest.url)) as resp,
        ):
            if resp.status != 200:
                raise UpdateRefused("download_failed", f"{where}: HTTP {resp.status}")
            declared = resp.content_length
            if declared is not None and declared > manifest.size:
                raise UpdateRefused(
                    "oversized",
                    f"{where}: {declared} bytes announced, manifest says {manifest.size}",
                )
            async for chunk in resp.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > manifest.size:
                    raise UpdateRefused(
                        "oversized", f"{where}: more than the manifest's {manifest.size} bytes"
                    )
                digest.update(chunk)
                chunks.append(chunk)
    except TimeoutError as exc:
        raise UpdateRefused("timeout", f"{where}: not complete after {timeout_s:.0f} s") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpdateRefused("truncated", f"{where}: body cut short after {size} bytes") from exc
    except aiohttp.ClientError as exc:
        raise UpdateRefused("download_failed", f"{where}: {exc}") from exc
    if size != manifest.size:
        raise UpdateRefused("truncated", f"{where}: {size} of {manifest.size} bytes")
    if digest.hexdigest() != manifest.sha256:
        raise UpdateRefused("tampered", f"{where}: sha256 does not match the signed manifest")
    return b"".join(chunks)


def health_check(path: Path, manifest: ModelManifest, config: UpdateConfig) -> Model:
    """Load beside the running model, score a full candidate set, time it against the budget."""
    try:
        model = load_model(path, manifest)
    except ModelRejected as exc:
        raise UpdateRefused("health_failed", str(exc)) from exc
    import numpy as np  # noqa: PLC0415 - numpy comes with a model (a thin device has none)

    spec = model.spec
    row = np.array([(f.default - f.mean) / f.scale for f in spec.features], dtype=np.float32)
    matrix = np.ascontiguousarray(np.tile(row, (max(config.candidates, 1), 1)))
    times = []
    for _ in range(5):
        started = time.perf_counter()
        scores = model.score(matrix)
        times.append((time.perf_counter() - started) * 1000.0)
        if not np.all(np.isfinite(scores)):
            raise UpdateRefused("health_failed", f"model v{model.version}: non-finite scores")
    took = statistics.median(times)
    if took > config.scoring_budget_ms:
        raise UpdateRefused(
            "too_slow",
            f"model v{model.version}: {took:.2f} ms for {config.candidates} candidates, "
            f"budget {config.scoring_budget_ms} ms",
        )
    return model


# ------------------------------------------------------------------ the updater


class ModelUpdater:
    """Takes manifests as they arrive; one update at a time, the newest waiting manifest next.

    `report` is what the device tells the gateway about the last model it tried (in its
    retained state); `on_report` runs whenever it changes.
    """

    def __init__(
        self,
        config: UpdateConfig,
        verifier: Verifier,
        metrics: Metrics,
        *,
        running: Callable[[], Model | None],
        swap: Callable[[Model], None],
        on_report: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.metrics = metrics
        self._running = running
        self._swap = swap
        self._on_report = on_report
        self._unknown = UnknownFields(metrics)
        self._pending: bytes | None = None
        self._worker: asyncio.Task[None] | None = None
        self._saves: set[asyncio.Task[None]] = set()
        self.refused: Refusals = {}
        self.report: ModelUpdateReport | None = None
        self.state: dict[str, Any] = {"state": "idle", "last_error": None, "last_reason": None}

    async def open(self) -> None:
        """Load the remembered refusals and the last report (before the first manifest)."""
        self.refused, self.report = await asyncio.to_thread(load_status, self.config.models_dir)

    def submit(self, payload: bytes) -> None:
        """Queue a manifest (replacing any not yet started) and make sure a worker runs."""
        if not self.config.serves_models:
            self.metrics.inc("model_update_thin_ignored")
            return
        self._pending = payload
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(
                self._work(), name=f"agent-{self.config.device_id}-model-update"
            )

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._saves:
            await asyncio.gather(*self._saves, return_exceptions=True)

    async def _work(self) -> None:
        while self._pending is not None:
            payload, self._pending = self._pending, None
            await self.handle(payload)

    def in_cohort(self, manifest: ModelManifest) -> bool:
        """True when the manifest targets every device or one of this device's cohorts."""
        if not manifest.cohorts:
            return True
        mine = {"all", f"profile:{self.config.profile}", *self.config.cohorts}
        return bool(mine.intersection(manifest.cohorts))

    async def handle(self, payload: bytes) -> str:
        """Apply one manifest; returns `applied`, `current`, `waiting`, `known_refused` or the
        refusal reason."""
        model = self._running()
        running = model.version if model is not None else None
        manifest: ModelManifest | None = None
        try:
            manifest, unknown = check_manifest(payload, self.verifier, self.config, running)
            self._unknown.note("ModelManifest", unknown)
            if manifest.version == running:
                return "current"
            if not self.in_cohort(manifest):
                self.state.update(state="waiting", offered_version=manifest.version)
                self.metrics.inc("model_update_not_in_cohort")
                return "waiting"
            if not in_rollout(self.config.device_id, rollout_key(manifest), manifest.rollout):
                self.state.update(state="waiting", offered_version=manifest.version)
                self.metrics.inc("model_update_not_in_rollout")
                return "waiting"
            known = self.refused.get((manifest.version, manifest.sha256))
            if known is not None:
                self.metrics.inc("model_update_known_refused")
                log.debug("model v%d was refused before (%s)", manifest.version, known)
                return "known_refused"
            self.state.update(state="downloading", offered_version=manifest.version)
            data = await download(manifest, self.config.download_timeout_s)
            signed = codec.decode_object(payload, max_compressed=MAX_MANIFEST_BYTES)
            path = await asyncio.to_thread(
                install, self.config.models_dir, manifest.version, data, signed
            )
            fresh = await asyncio.to_thread(health_check, path, manifest, self.config)
            await asyncio.to_thread(point_to, self.config.models_dir, manifest.version)
        except UpdateRefused as exc:
            self.metrics.inc("model_updates_refused")
            self.metrics.inc(f"model_update_refused_{exc.reason}")
            self.state.update(state="refused", last_error=str(exc), last_reason=exc.reason)
            log.warning("model update refused (%s): %s", exc.reason, exc)
            if exc.reason in FILE_FAULTS and manifest is not None:
                self.refused[(manifest.version, manifest.sha256)] = exc.reason
                await self._report(manifest.version, "failed", exc.reason, running)
            return exc.reason
        self._swap(fresh)
        self.metrics.inc("models_loaded")  # as every model loaded (agent.runtime.build)
        self.metrics.inc("model_updates_applied")
        self.state.update(state="applied", applied_version=fresh.version)
        log.info("model v%d is now running (was v%s)", fresh.version, running)
        await self._report(fresh.version, "applied", None, fresh.version)
        return "applied"

    def rolled_back(self, bad: Model, good: Model | None, error: str) -> None:
        """`bad` failed at run time and `good` (None: priority ranking) serves instead: remember
        the refusal, point `current` back at `good`, report `rolled_back` (in the background)."""
        self.refused[(bad.version, bad.sha256)] = RUNTIME_FAILED
        self.metrics.inc("model_rollbacks")
        self.state.update(
            state="rolled_back",
            last_error=error,
            last_reason=RUNTIME_FAILED,
            applied_version=good.version if good is not None else None,
        )
        running = good.version if good is not None else None
        log.error("model v%d failed at run time, back to v%s: %s", bad.version, running, error)
        task = asyncio.get_running_loop().create_task(
            self._revert(bad.version, running), name=f"agent-{self.config.device_id}-model-revert"
        )
        self._saves.add(task)
        task.add_done_callback(self._saves.discard)

    async def _revert(self, bad: int, running: int | None) -> None:
        try:
            await asyncio.to_thread(revert, self.config.models_dir, running)
        except OSError as exc:
            log.error("could not point back to model v%s: %s", running, exc)  # noqa: TRY400
        await self._report(bad, "rolled_back", RUNTIME_FAILED, running)

    async def _report(
        self, version: int, status: str, reason: str | None, running: int | None
    ) -> None:
        self.report = ModelUpdateReport.model_validate(
            {
                "version": version,
                "status": status,
                "reason": reason,
                "running": running,
                "at": utcnow(),
            }
        )
        while len(self.refused) > MAX_REMEMBERED:
            del self.refused[next(iter(self.refused))]
        try:
            await asyncio.to_thread(save_status, self.config.models_dir, self.refused, self.report)
        except OSError as exc:
            log.warning("could not save the model update status: %s", exc)
        if self._on_report is not None:
            self._on_report()
