"""The model registry: validate uploaded models, sign their manifests, serve files, roll out
(its HTTP routes: `cloud_gateway.api.models`).

`POST /v1/models` (multipart: `manifest` JSON without kid/sig, `model` the ONNX bytes, with
an operator token) checks the manifest against the bytes (sha256, size), the version (only
increasing), the expiry and that onnxruntime opens the file with the spec's input and width;
it stores the file under `DATA_DIR/models/`. `POST /v1/models/{version}/rollout` with
`{"cohort": "all" | "profile:<p>" | any cohort such as "region:cn-east", "percent": 0..100}`
re-checks the expiry, signs the manifest with the gateway's key (with `url`, `rollout` and,
unless the cohort is `all`, `cohorts` set: devices outside them do not fetch it) and
publishes it retained on `models/{profile}/manifest` for each targeted profile.
`GET /v1/models/{version}/model.onnx` serves the file without a token: devices check it
against the signed manifest, not the channel.

Rollout health: devices report in their retained state what became of the model they tried
(`applied`, `failed`, `rolled_back`; `ModelRegistry.record_health`). When the failures reach
`halt_min_devices` AND `halt_fraction` of the reporting devices, the rollout is halted: the
newest earlier good model of each affected profile is republished as a NEW higher version
(devices refuse older versions), or, with none, the manifest is re-signed at 0 % so no further
device fetches it. `GET /v1/models/{version}` shows rollouts, health and any halt; register,
rollout and halt are audited.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from cloud_gateway.api.app import ApiProblem
from cloud_gateway.db.store import Store
from cloud_gateway.errors import NotFound, StoreError
from cloud_gateway.runtime.wiring import Service, Wiring
from protocol import codec
from protocol.envelopes import ModelManifest, ModelUpdateReport
from protocol.errors import ProtocolError
from protocol.ids import format_time, utcnow
from protocol.vocabulary import PROFILES

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024
FILE_PATH = re.compile(r"^/v1/models/[0-9]{1,9}/model\.onnx$")
"""The one registry path served without a token (see `cloud_gateway.api.app.PUBLIC_PATTERNS`)."""

Cohort = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9:_-]{0,63}$")]


class RolloutIn(BaseModel):
    """Body of `POST /v1/models/{version}/rollout`."""

    model_config = ConfigDict(extra="forbid")

    cohort: Cohort = "all"
    percent: Annotated[int, Field(ge=0, le=100)]


# ------------------------------------------------------------------ SQL (runs on the DB thread)


def _latest_version(store: Store) -> int:
    row = store.conn.execute("SELECT max(version) FROM models").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _insert_model(store: Store, manifest: ModelManifest, who: str) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT INTO models (version, name, sha256, size, profiles, manifest, registered_at,"
            " registered_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                manifest.version,
                manifest.name,
                manifest.sha256,
                manifest.size,
                json.dumps(manifest.profiles),
                json.dumps(manifest.to_wire(), separators=(",", ":")),
                format_time(utcnow()),
                who,
            ],
        )


def _get_model(store: Store, version: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM models WHERE version = ?", [version]).fetchone()
    return dict(row) if row is not None else None


def _list_models(store: Store, version: int | None = None) -> list[dict[str, Any]]:
    if version is None:
        models = [dict(r) for r in store.conn.execute("SELECT * FROM models ORDER BY version")]
    else:
        models = [
            dict(r) for r in store.conn.execute("SELECT * FROM models WHERE version = ?", [version])
        ]
    rollouts = [dict(r) for r in store.conn.execute("SELECT * FROM model_rollouts")]
    for model in models:
        model["profiles"] = json.loads(model["profiles"])
        model["manifest"] = json.loads(model["manifest"])
        model["rollouts"] = {
            r["profile"]: {"cohort": r["cohort"], "percent": r["percent"]}
            for r in rollouts
            if r["version"] == model["version"]
        }
        model["health"] = _health(store, model["version"]).doc()
        model["halt"] = _halt_of(store, model["version"])
    return models


def _record_health(store: Store, device_id: str, report: ModelUpdateReport) -> bool:
    """Store a device's report; False when the version is not a registered model."""
    try:
        if _get_model(store, report.version) is None:
            return False
        _upsert_health(store, device_id, report)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot record model health of {device_id}: {exc}") from exc
    return True


def _upsert_health(store: Store, device_id: str, report: ModelUpdateReport) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT OR REPLACE INTO model_health (version, device_id, status, reason, running, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                report.version,
                device_id,
                report.status,
                report.reason,
                report.running,
                format_time(report.at or utcnow()),
            ],
        )


def _health(store: Store, version: int) -> Health:
    rows = store.conn.execute(
        "SELECT status, count(*) FROM model_health WHERE version = ? GROUP BY status", [version]
    ).fetchall()
    counts = {str(r[0]): int(r[1]) for r in rows}
    return Health(counts.get("applied", 0), counts.get("failed", 0), counts.get("rolled_back", 0))


def _halt_of(store: Store, version: int) -> dict[str, Any] | None:
    row = store.conn.execute("SELECT * FROM model_halts WHERE version = ?", [version]).fetchone()
    return dict(row) if row is not None else None


def _record_halt(store: Store, version: int, doc: dict[str, Any]) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT OR REPLACE INTO model_halts (version, halted_at, reason, replacement,"
            " failures, reporting) VALUES (?, ?, ?, ?, ?, ?)",
            [
                version,
                doc["halted_at"],
                doc["reason"],
                doc["replacement"],
                doc["failures"],
                doc["reporting"],
            ],
        )


def _good_before(store: Store, version: int, profile: str) -> dict[str, Any] | None:
    """The newest registered model below `version` built for `profile`, not halted, unexpired."""
    rows = store.conn.execute(
        "SELECT * FROM models WHERE version < ? AND version NOT IN"
        " (SELECT version FROM model_halts) ORDER BY version DESC",
        [version],
    ).fetchall()
    now = utcnow()
    for row in rows:
        manifest = ModelManifest.model_validate(json.loads(row["manifest"]))
        if profile in manifest.profiles and manifest.expires_at > now:
            return dict(row)
    return None


def _rollouts_of(store: Store, version: int) -> list[dict[str, Any]]:
    rows = store.conn.execute("SELECT * FROM model_rollouts WHERE version = ?", [version])
    return [dict(r) for r in rows]


def _published(store: Store) -> dict[str, int]:
    rows = store.conn.execute("SELECT profile, version FROM model_rollouts").fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def _record_rollout(
    store: Store, profile: str, version: int, *, cohort: str, percent: int, signed: dict[str, Any]
) -> None:
    with store.conn:
        store.conn.execute(
            "INSERT OR REPLACE INTO model_rollouts (profile, version, cohort, percent, manifest,"
            " published_at) VALUES (?, ?, ?, ?, ?, ?)",
            [profile, version, cohort, percent, json.dumps(signed), format_time(utcnow())],
        )


# ------------------------------------------------------------------ pure checks


def check_model_bytes(manifest: ModelManifest, data: bytes) -> None:
    """Raise ApiProblem(400) unless `data` is the file `manifest` describes and opens."""
    if len(data) != manifest.size:
        raise ApiProblem(
            400, "Bad Request", f"model: {len(data)} bytes, the manifest says {manifest.size}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise ApiProblem(
            400, "Bad Request", f"model: sha256 {digest}, the manifest says {manifest.sha256}"
        )
    import onnxruntime  # noqa: PLC0415  # heavy; only the registry needs it

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ApiProblem(400, "Bad Request", f"model: onnxruntime cannot open it: {exc}") from exc
    spec = manifest.feature_spec
    inputs = session.get_inputs()
    shape = list(inputs[0].shape or []) if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0].name != spec.input_name or len(shape) != 2:
        raise ApiProblem(
            400, "Bad Request", f"model: expected one input {spec.input_name!r} of shape [N, F]"
        )
    if isinstance(shape[1], int) and shape[1] != len(spec.features):
        raise ApiProblem(
            400,
            "Bad Request",
            f"model: takes {shape[1]} features, the spec lists {len(spec.features)}",
        )
    if spec.output_name not in {o.name for o in session.get_outputs()}:
        raise ApiProblem(400, "Bad Request", f"model: no output {spec.output_name!r}")


def cohort_profiles(cohort: str, profiles: list[str]) -> list[str]:
    """The manifest topics a rollout to `cohort` goes to (manifests are retained per profile).

    `profile:<p>` narrows to one profile; any other cohort goes to every profile of the model
    and the devices check the cohort themselves (it is in the signed manifest)."""
    if cohort.startswith("profile:"):
        wanted = cohort[len("profile:") :]
        if wanted not in PROFILES:
            raise ApiProblem(400, "Bad Request", f"cohort {cohort!r}: no such profile")
        if wanted not in profiles:
            raise ApiProblem(409, "Conflict", f"the model is not built for profile {wanted!r}")
        return [wanted]
    return list(profiles)


def manifest_cohorts(cohort: str) -> list[str] | None:
    """The `cohorts` a rollout to `cohort` signs into the manifest (None: every device)."""
    return None if cohort == "all" else [cohort]


@dataclass(frozen=True, slots=True)
class Health:
    """What the devices reported about one model version."""

    applied: int = 0
    failed: int = 0
    rolled_back: int = 0

    @property
    def reporting(self) -> int:
        return self.applied + self.failed + self.rolled_back

    @property
    def failures(self) -> int:
        return self.failed + self.rolled_back

    def should_halt(self, fraction: float, min_devices: int) -> bool:
        """Pure: the failures pass both thresholds (a count and a share of reporting devices)."""
        return (
            self.failures >= min_devices
            and self.reporting > 0
            and self.failures >= fraction * self.reporting
        )

    def doc(self) -> dict[str, int]:
        return {
            "applied": self.applied,
            "failed": self.failed,
            "rolled_back": self.rolled_back,
            "reporting": self.reporting,
        }


# ------------------------------------------------------------------ the service


class ModelRegistry(Service):
    """Registered models on disk and in the DB; signs and publishes manifests on rollout."""

    def __init__(
        self,
        wiring: Wiring,
        *,
        models_dir: Path,
        halt_fraction: float = 0.05,
        halt_min_devices: int = 5,
    ) -> None:
        super().__init__(wiring)
        self.halt_fraction = halt_fraction
        self.halt_min_devices = halt_min_devices
        self.models_dir = models_dir
        self._lock = asyncio.Lock()

    def file_path(self, version: int) -> Path:
        return self.models_dir / f"v{version}.onnx"

    async def register(self, raw_manifest: Any, data: bytes, who: str) -> dict[str, Any]:
        """Validate and store an uploaded model; returns the registered (unsigned) manifest."""
        if not isinstance(raw_manifest, dict) or {"kid", "sig"} & set(raw_manifest):
            raise ApiProblem(
                400, "Bad Request", "manifest: a JSON object without kid/sig (the gateway signs)"
            )
        try:
            manifest = codec.validate(raw_manifest, ModelManifest)
        except ProtocolError as exc:
            raise ApiProblem(400, "Bad Request", f"manifest: {exc}") from exc
        if manifest.expires_at <= utcnow():
            raise ApiProblem(400, "Bad Request", f"manifest: expired at {manifest.expires_at}")
        await asyncio.to_thread(check_model_bytes, manifest, data)
        async with self._lock:
            latest = await self._db.call(_latest_version)
            if manifest.version <= latest:
                self._counters["models_refused_version"] += 1
                raise ApiProblem(
                    409,
                    "Conflict",
                    f"version {manifest.version} is not above the latest registered ({latest})",
                )
            await asyncio.to_thread(_write_file, self.file_path(manifest.version), data)
            await self._db.call(_insert_model, manifest, who)
        self._counters["models_registered"] += 1
        await self._db.call(
            Store.audit,
            who,
            "model.register",
            str(manifest.version),
            utcnow(),
            {"name": manifest.name, "sha256": manifest.sha256, "profiles": manifest.profiles},
        )
        log.info("model %s v%d registered by %s", manifest.name, manifest.version, who)
        return manifest.to_wire()

    async def rollout(
        self, version: int, body: RolloutIn, base_url: str, who: str = "gateway"
    ) -> dict[str, Any]:
        """Sign the manifest for `body.percent` of `body.cohort` and publish it retained per
        targeted profile."""
        row = await self._db.call(_get_model, version)
        if row is None:
            raise NotFound("model", str(version))
        manifest = json.loads(row["manifest"])
        checked = ModelManifest.model_validate(manifest)
        if checked.expires_at <= utcnow():
            raise ApiProblem(
                409,
                "Conflict",
                f"model v{version}: its manifest expired at {manifest['expires_at']}; "
                "devices would refuse it (register a new version)",
            )
        profiles = cohort_profiles(body.cohort, manifest["profiles"])
        async with self._lock:
            halt = await self._db.call(_halt_of, version)
            if halt is not None:
                raise ApiProblem(409, "Conflict", f"model v{version} was halted: {halt['reason']}")
            published = await self._db.call(_published)
            for profile in profiles:
                if published.get(profile, 0) > version:
                    raise ApiProblem(
                        409,
                        "Conflict",
                        f"profile {profile} already runs v{published[profile]}; devices refuse "
                        f"an older version (publish a new version to roll back)",
                    )
            signed = await self._publish_manifest(
                manifest, profiles, cohort=body.cohort, percent=body.percent, base_url=base_url
            )
        self._counters["model_rollouts"] += 1
        await self._db.call(
            Store.audit,
            who,
            "model.rollout",
            str(version),
            utcnow(),
            {"cohort": body.cohort, "percent": body.percent, "profiles": profiles},
        )
        log.info(
            "model v%d at %d%% of %s on %s", version, body.percent, body.cohort, ", ".join(profiles)
        )
        return {"version": version, "profiles": profiles, "manifest": signed}

    async def _publish_manifest(
        self,
        manifest: dict[str, Any],
        profiles: list[str],
        *,
        cohort: str,
        percent: int,
        base_url: str,
    ) -> dict[str, Any]:
        """Sign and publish retained on each profile's manifest topic; record it (in the lock)."""
        version = int(manifest["version"])
        doc = {**manifest, "url": f"{base_url}/v1/models/{version}/model.onnx", "rollout": percent}
        doc.pop("cohorts", None)
        cohorts = manifest_cohorts(cohort)
        if cohorts is not None:
            doc["cohorts"] = cohorts
        signed = self._signer.sign(doc)
        for profile in profiles:
            await self._publish(
                self._topics.model_manifest(profile), codec.encode_dict(signed), True
            )
            await self._db.call(
                _record_rollout, profile, version, cohort=cohort, percent=percent, signed=signed
            )
        return signed

    async def get(self, version: int) -> dict[str, Any]:
        """One model with its rollouts, the devices' health reports and any halt."""
        found = await self._db.call(_list_models, version)
        if not found:
            raise NotFound("model", str(version))
        return found[0]

    async def record_health(self, device_id: str, report: ModelUpdateReport) -> None:
        """A device's report on a model it tried; halts the rollout past the thresholds."""
        if not await self._db.call(_record_health, device_id, report):
            self._counters["model_health_unknown_version"] += 1
            return
        self._counters[f"model_health_{report.status}"] += 1
        if report.status == "applied":
            return
        health = await self._db.call(_health, report.version)
        if health.should_halt(self.halt_fraction, self.halt_min_devices):
            await self.halt(report.version, health)

    async def halt(self, version: int, health: Health) -> dict[str, Any] | None:
        """Stop offering `version`: republish each affected profile's newest earlier good
        model as a new version, or re-sign `version` at 0 %; recorded and audited."""
        async with self._lock:
            if await self._db.call(_halt_of, version) is not None:
                return None
            rollouts = await self._db.call(_rollouts_of, version)
            # devices fetch from where the halted rollout told them to
            base = _base_url(rollouts)
            replacement: int | None = None
            by_good: dict[int, list[str]] = {}
            stopped: list[str] = []
            for rollout in rollouts:
                good = await self._db.call(_good_before, version, rollout["profile"])
                if good is None or base is None:
                    stopped.append(rollout["profile"])
                else:
                    by_good.setdefault(int(good["version"]), []).append(rollout["profile"])
            cohort = rollouts[0]["cohort"] if rollouts else "all"
            for good_version, profiles in sorted(by_good.items()):
                assert base is not None  # by_good is only filled with a base URL
                replacement = await self._republish(good_version, profiles, cohort, base)
            row = await self._db.call(_get_model, version)
            if stopped and row is not None:
                manifest = json.loads(row["manifest"])
                await self._publish_manifest(
                    manifest, stopped, cohort=cohort, percent=0, base_url=base or ""
                )
            doc = {
                "halted_at": format_time(utcnow()),
                "reason": (
                    f"{health.failures} of {health.reporting} reporting devices failed "
                    f"(thresholds: {self.halt_min_devices} devices, "
                    f"{self.halt_fraction:.0%})"
                ),
                "replacement": replacement,
                "failures": health.failures,
                "reporting": health.reporting,
            }
            await self._db.call(_record_halt, version, doc)
        self._counters["model_rollouts_halted"] += 1
        await self._db.call(
            Store.audit,
            "gateway",
            "model.halt",
            str(version),
            utcnow(),
            {**doc, **health.doc(), "stopped": stopped},
        )
        log.warning("model v%d halted: %s; replacement v%s", version, doc["reason"], replacement)
        return doc

    async def _republish(self, good: int, profiles: list[str], cohort: str, base: str) -> int:
        """Register the good model `good` again as the next version and publish it at 100 %."""
        row = await self._db.call(_get_model, good)
        if row is None:
            raise NotFound("model", str(good))
        version = await self._db.call(_latest_version) + 1
        manifest = ModelManifest.model_validate(
            {**json.loads(row["manifest"]), "version": version, "created_at": utcnow()}
        )
        data = await asyncio.to_thread(self.file_path(good).read_bytes)
        await asyncio.to_thread(_write_file, self.file_path(version), data)
        await self._db.call(_insert_model, manifest, f"gateway:halt-replaces-v{good}")
        await self._publish_manifest(
            manifest.to_wire(), profiles, cohort=cohort, percent=100, base_url=base
        )
        return version

    async def list(self) -> list[dict[str, Any]]:
        return await self._db.call(_list_models)


def _base_url(rollouts: list[dict[str, Any]]) -> str | None:
    for rollout in rollouts:
        url = json.loads(rollout["manifest"]).get("url")
        if isinstance(url, str) and "/v1/models/" in url:
            return url.rsplit("/v1/models/", 1)[0]
    return None


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
