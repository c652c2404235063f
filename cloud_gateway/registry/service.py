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
rollout and halt are audited. A rollout can be an experiment (`registry.experiments`): the
model's document then carries its `experiment`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any

from cloud_gateway.db import leases
from cloud_gateway.db import registry as registry_sql
from cloud_gateway.db.audit import audit
from cloud_gateway.errors import Conflict, InvalidInput, NotFound
from cloud_gateway.registry.bodies import RolloutIn
from cloud_gateway.registry.checks import (
    Health,
    check_model_bytes,
    cohort_profiles,
    manifest_cohorts,
)
from cloud_gateway.registry.experiments import Experiments
from cloud_gateway.runtime.wiring import Service, Wiring
from daemonkit.files import write_durable
from protocol import codec
from protocol.envelopes import ModelManifest, ModelUpdateReport
from protocol.errors import ProtocolError
from protocol.ids import format_time, utcnow

__all__ = ["MAX_MANIFEST_BYTES", "MAX_MODEL_BYTES", "ModelRegistry", "RolloutIn"]
"""`RolloutIn` lives in `registry.bodies`; callers keep importing it from here too."""

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 256 * 1024

# ------------------------------------------------------------------ the service

HALT_CLAIM_S = 120.0
"""A worker halting a rollout holds its claim this long (a halt takes a few publishes)."""


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
        self._holder = f"registry-{uuid.uuid4().hex[:12]}"
        self.experiments = Experiments(self)
        """Model experiments: a candidate against the control, decided by a sequential test."""

    def file_path(self, version: int) -> Path:
        return self.models_dir / f"v{version}.onnx"

    async def register(self, raw_manifest: Any, data: bytes, who: str) -> dict[str, Any]:
        """Validate and store an uploaded model; returns the registered (unsigned) manifest."""
        if not isinstance(raw_manifest, dict) or {"kid", "sig"} & set(raw_manifest):
            raise InvalidInput("manifest: a JSON object without kid/sig (the gateway signs)")
        try:
            manifest = codec.validate(raw_manifest, ModelManifest)
        except ProtocolError as exc:
            raise InvalidInput(f"manifest: {exc}") from exc
        if manifest.expires_at <= utcnow():
            raise InvalidInput(f"manifest: expired at {manifest.expires_at}")
        await asyncio.to_thread(check_model_bytes, manifest, data)
        async with self._lock:
            latest = await self._db.call(registry_sql.latest_version)
            if manifest.version <= latest:
                self._counters["models_refused_version"] += 1
                raise Conflict(
                    f"version {manifest.version} is not above the latest registered ({latest})",
                )
            await asyncio.to_thread(_write_file, self.file_path(manifest.version), data)
            await self._db.call(registry_sql.insert_model, manifest, who)
        self._counters["models_registered"] += 1
        await self._db.call(
            audit,
            who,
            "model.register",
            str(manifest.version),
            {"name": manifest.name, "sha256": manifest.sha256, "profiles": manifest.profiles},
        )
        log.info("model %s v%d registered by %s", manifest.name, manifest.version, who)
        return manifest.to_wire()

    async def rollout(
        self, version: int, body: RolloutIn, base_url: str, who: str = "gateway"
    ) -> dict[str, Any]:
        """Sign the manifest for `body.percent` of `body.cohort` and publish it retained per
        targeted profile."""
        row = await self._db.call(registry_sql.get_model, version)
        if row is None:
            raise NotFound("model", str(version))
        manifest = json.loads(row["manifest"])
        checked = ModelManifest.model_validate(manifest)
        if checked.expires_at <= utcnow():
            raise Conflict(
                f"model v{version}: its manifest expired at {manifest['expires_at']}; "
                "devices would refuse it (register a new version)",
            )
        profiles = cohort_profiles(body.cohort, manifest["profiles"])
        async with self._lock:
            halt = await self._db.call(registry_sql.halt_of, version)
            if halt is not None:
                raise Conflict(f"model v{version} was halted: {halt['reason']}")
            published = await self._db.call(registry_sql.published)
            for profile in profiles:
                if published.get(profile, 0) > version:
                    raise Conflict(
                        f"profile {profile} already runs v{published[profile]}; devices refuse "
                        f"an older version (publish a new version to roll back)",
                    )
            signed = await self._publish_manifest(
                manifest, profiles, cohort=body.cohort, percent=body.percent, base_url=base_url
            )
        self._counters["model_rollouts"] += 1
        await self._db.call(
            audit,
            who,
            "model.rollout",
            str(version),
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
                registry_sql.record_rollout,
                profile,
                version,
                cohort=cohort,
                percent=percent,
                signed=signed,
            )
        return signed

    async def get(self, version: int) -> dict[str, Any]:
        """One model with its rollouts, the devices' health reports and any halt."""
        found = await self._db.call(registry_sql.list_models, version)
        if not found:
            raise NotFound("model", str(version))
        return await self._with_experiment(found[0])

    async def _with_experiment(self, model: dict[str, Any]) -> dict[str, Any]:
        """`model` with its experiment (as the candidate), when it had one."""
        experiment = await self.experiments.of_model(int(model["version"]))
        if experiment is not None:
            model["experiment"] = experiment
        return model

    async def record_health(self, device_id: str, report: ModelUpdateReport) -> None:
        """A device's report on a model it tried; halts the rollout past the thresholds."""
        if not await self._db.call(registry_sql.record_health, device_id, report):
            self._counters["model_health_unknown_version"] += 1
            return
        self._counters[f"model_health_{report.status}"] += 1
        if report.status == "applied":
            return
        health = await self._db.call(registry_sql.health, report.version)
        if health.should_halt(self.halt_fraction, self.halt_min_devices):
            await self.halt(report.version, health)

    async def halt(
        self, version: int, health: Health, reason: str | None = None
    ) -> dict[str, Any] | None:
        """Stop offering `version`: republish each affected profile's newest earlier good
        model as a new version, or re-sign `version` at 0 %; recorded and audited. `reason`:
        why, when not the devices' failures (an experiment's verdict)."""
        async with self._lock:
            if await self._db.call(registry_sql.halt_of, version) is not None:
                return None
            # once across workers: the halt is claimed (a lease no other worker can take
            # while this one halts; see runtime/fleet.py)
            claim = f"model-halt:{version}"
            if not await self._db.call(leases.acquire, claim, self._holder, HALT_CLAIM_S):
                return None
            rollouts = await self._db.call(registry_sql.rollouts_of, version)
            # devices fetch from where the halted rollout told them to
            base = _base_url(rollouts)
            replacement: int | None = None
            by_good: dict[int, list[str]] = {}
            stopped: list[str] = []
            for rollout in rollouts:
                good = await self._db.call(registry_sql.good_before, version, rollout["profile"])
                if good is None or base is None:
                    stopped.append(rollout["profile"])
                else:
                    by_good.setdefault(int(good["version"]), []).append(rollout["profile"])
            cohort = rollouts[0]["cohort"] if rollouts else "all"
            for good_version, profiles in sorted(by_good.items()):
                assert base is not None  # by_good is only filled with a base URL
                replacement = await self._republish(good_version, profiles, cohort, base)
            row = await self._db.call(registry_sql.get_model, version)
            if stopped and row is not None:
                manifest = json.loads(row["manifest"])
                await self._publish_manifest(
                    manifest, stopped, cohort=cohort, percent=0, base_url=base or ""
                )
            doc = {
                "halted_at": format_time(utcnow()),
                "reason": reason
                or (
                    f"{health.failures} of {health.reporting} reporting devices failed "
                    f"(thresholds: {self.halt_min_devices} devices, "
                    f"{self.halt_fraction:.0%})"
                ),
                "replacement": replacement,
                "failures": health.failures,
                "reporting": health.reporting,
            }
            await self._db.call(registry_sql.record_halt, version, doc)
        self._counters["model_rollouts_halted"] += 1
        await self._db.call(
            audit,
            "gateway",
            "model.halt",
            str(version),
            {**doc, **health.doc(), "stopped": stopped},
        )
        log.warning("model v%d halted: %s; replacement v%s", version, doc["reason"], replacement)
        return doc

    async def _republish(self, good: int, profiles: list[str], cohort: str, base: str) -> int:
        """Register the good model `good` again as the next version and publish it at 100 %."""
        row = await self._db.call(registry_sql.get_model, good)
        if row is None:
            raise NotFound("model", str(good))
        version = await self._db.call(registry_sql.latest_version) + 1
        manifest = ModelManifest.model_validate(
            {**json.loads(row["manifest"]), "version": version, "created_at": utcnow()}
        )
        data = await asyncio.to_thread(self.file_path(good).read_bytes)
        await asyncio.to_thread(_write_file, self.file_path(version), data)
        await self._db.call(registry_sql.insert_model, manifest, f"gateway:halt-replaces-v{good}")
        await self._publish_manifest(
            manifest.to_wire(), profiles, cohort=cohort, percent=100, base_url=base
        )
        return version

    async def list(self) -> list[dict[str, Any]]:
        models = await self._db.call(registry_sql.list_models)
        return [await self._with_experiment(model) for model in models]


def _base_url(rollouts: list[dict[str, Any]]) -> str | None:
    for rollout in rollouts:
        url = json.loads(rollout["manifest"]).get("url")
        if isinstance(url, str) and "/v1/models/" in url:
            return url.rsplit("/v1/models/", 1)[0]
    return None


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durable(path, data)
