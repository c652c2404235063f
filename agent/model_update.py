"""Model updates on the device: check a signed manifest, download, health-check, swap atomically.

A manifest from `models/{profile}/manifest` is refused (counted as
`model_update_refused_<reason>`, reported in `state`, the running model untouched) when it
is oversized, malformed, unsigned, badly signed, expired, for another profile, older than
the running model (rollback), or when its file is oversized, truncated, tampered, slow
past the deadline, or fails the health check (loads, spec served, finite scores, scoring
latency within the profile's budget). A device outside the rollout percentage waits.

On disk (`DATA_DIR/models/`): `v{N}.onnx` and `v{N}.json` (the signed manifest), each
written to a temporary file, fsynced and renamed; then `current` (a small JSON pointer) is
replaced the same way and the folder fsynced. A power cut leaves `current` naming the old
or the new pair, both complete: never a mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from agent.errors import ModelRejected
from agent.metrics import Metrics
from agent.scoring import Model, load_model
from protocol import codec
from protocol.assign import in_rollout
from protocol.envelopes import ModelManifest
from protocol.errors import ProtocolError, SignatureError
from protocol.signing import Verifier

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 256 * 1024
CHUNK = 64 * 1024
POINTER = "current"
KEEP_VERSIONS = 2


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


def rollout_key(manifest: ModelManifest) -> str:
    """The salt of a model's staged rollout: the same devices at every percentage step."""
    return f"model:{manifest.name}:{manifest.version}"


# ------------------------------------------------------------------ files (blocking: threads)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a fsynced temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def install(models_dir: Path, version: int, data: bytes, manifest: dict[str, Any]) -> Path:
    """Write the model file and its signed manifest durably (not yet current)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"v{version}.onnx"
    write_durable(path, data)
    write_durable(models_dir / f"v{version}.json", json.dumps(manifest).encode())
    return path


def point_to(models_dir: Path, version: int) -> None:
    """Make `version` current (one atomic rename), then drop files of older versions."""
    write_durable(models_dir / POINTER, json.dumps({"version": version}).encode())
    versions = sorted(int(p.stem[1:]) for p in models_dir.glob("v*.onnx") if p.stem[1:].isdigit())
    for old in versions[:-KEEP_VERSIONS]:
        if old != version:
            for suffix in (".onnx", ".json"):
                (models_dir / f"v{old}{suffix}").unlink(missing_ok=True)
    for stray in models_dir.glob("*.tmp"):
        stray.unlink(missing_ok=True)


def load_current(models_dir: Path) -> Model | None:
    """The model `current` names, verified against its stored manifest; None when there is
    none or it does not verify (the caller falls back to the shipped default)."""
    pointer = models_dir / POINTER
    if not pointer.is_file():
        return None
    try:
        version = int(json.loads(pointer.read_text(encoding="utf-8"))["version"])
        manifest = json.loads((models_dir / f"v{version}.json").read_text(encoding="utf-8"))
        return load_model(models_dir / f"v{version}.onnx", manifest)
    except (OSError, ValueError, KeyError, TypeError, ModelRejected) as exc:
        log.error("the current model in %s is unusable: %s", models_dir, exc)  # noqa: TRY400
        return None


# ------------------------------------------------------------------ checks


def check_manifest(
    payload: bytes, verifier: Verifier, config: UpdateConfig, running: int | None
) -> ModelManifest:
    """The manifest if this device should fetch it; UpdateRefused otherwise."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise UpdateRefused("oversized_manifest", f"manifest: {len(payload)} bytes")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UpdateRefused("malformed", f"manifest: not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise UpdateRefused("malformed", "manifest: not a JSON object")
    if not isinstance(obj.get("kid"), str) or not isinstance(obj.get("sig"), str):
        raise UpdateRefused("unsigned", "manifest: kid and sig are required")
    try:
        verifier.verify(obj)
    except SignatureError as exc:
        reason = "expired" if "expired" in str(exc) else "bad_signature"
        raise UpdateRefused(reason, f"manifest: {exc}") from exc
    try:
        manifest = codec.validate(obj, ModelManifest)
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
    return manifest


async def download(manifest: ModelManifest, timeout_s: float) -> bytes:
    """The file at `manifest.url`, at most `manifest.size` bytes, matching its sha256."""
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
    """Takes manifests as they arrive; one update at a time, the newest waiting manifest next."""

    def __init__(
        self,
        config: UpdateConfig,
        verifier: Verifier,
        metrics: Metrics,
        *,
        running: Callable[[], Model | None],
        swap: Callable[[Model], None],
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.metrics = metrics
        self._running = running
        self._swap = swap
        self._pending: bytes | None = None
        self._worker: asyncio.Task[None] | None = None
        self.state: dict[str, Any] = {"state": "idle", "last_error": None, "last_reason": None}

    def submit(self, payload: bytes) -> None:
        """Queue a manifest (replacing any not yet started) and make sure a worker runs."""
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

    async def _work(self) -> None:
        while self._pending is not None:
            payload, self._pending = self._pending, None
            await self.handle(payload)

    async def handle(self, payload: bytes) -> str:
        """Apply one manifest; returns `applied`, `current`, `waiting` or the refusal reason."""
        model = self._running()
        running = model.version if model is not None else None
        try:
            manifest = check_manifest(payload, self.verifier, self.config, running)
            if manifest.version == running:
                return "current"
            if not in_rollout(self.config.device_id, rollout_key(manifest), manifest.rollout):
                self.state.update(state="waiting", offered_version=manifest.version)
                self.metrics.inc("model_update_not_in_rollout")
                return "waiting"
            self.state.update(state="downloading", offered_version=manifest.version)
            data = await download(manifest, self.config.download_timeout_s)
            signed = json.loads(payload)
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
            return exc.reason
        self._swap(fresh)
        self.metrics.inc("model_updates_applied")
        self.state.update(state="applied", applied_version=fresh.version)
        log.info("model v%d is now running (was v%s)", fresh.version, running)
        return "applied"
