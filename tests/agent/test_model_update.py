"""Model updates against a real HTTP server on loopback: good swaps and every bad input refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.model.files import load_current, load_kept
from agent.model.scoring import Model, default_model_paths, load_default_model
from agent.model.update import ModelUpdater, UpdateConfig, rollout_key
from agent.runtime.metrics import Metrics
from protocol.assign import in_rollout
from protocol.envelopes import ModelManifest
from protocol.ids import format_time, utcnow
from protocol.signing import Signer, Verifier

MODEL_BYTES = default_model_paths()[0].read_bytes()
BASE_MANIFEST = json.loads(default_model_paths()[1].read_text())


@dataclass
class Files:
    """What the test server answers per path: bytes, or a handler for misbehaviour."""

    routes: dict[str, bytes] = field(default_factory=dict)
    port: int = 0


async def _serve(request: web.Request) -> web.StreamResponse:
    files = request.app[FILES]
    name = request.match_info["name"]
    if name == "endless":
        resp = web.StreamResponse()
        await resp.prepare(request)
        while True:
            await resp.write(b"\0" * 65536)
            await asyncio.sleep(0)
    if name == "stall":  # half the file, then nothing
        resp = web.StreamResponse(headers={"Content-Length": str(len(MODEL_BYTES))})
        await resp.prepare(request)
        await resp.write(MODEL_BYTES[: len(MODEL_BYTES) // 2])
        await asyncio.sleep(3600)
    if name == "cut":  # announces the full length, sends half, closes
        resp = web.StreamResponse(headers={"Content-Length": str(len(MODEL_BYTES))})
        await resp.prepare(request)
        await resp.write(MODEL_BYTES[: len(MODEL_BYTES) // 2])
        assert request.transport is not None
        request.transport.close()
        return resp
    return web.Response(body=files.routes[name], content_type="application/octet-stream")


FILES = web.AppKey("files", Files)


@pytest.fixture
async def files() -> AsyncIterator[Files]:
    app = web.Application()
    app[FILES] = found = Files()
    app.router.add_get("/{name}", _serve)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    found.port = runner.addresses[0][1]
    yield found
    await runner.cleanup()


@dataclass
class Device:
    updater: ModelUpdater
    metrics: Metrics
    signer: Signer
    models_dir: Path
    holder: dict[str, Model]
    files: Files

    @property
    def model(self) -> Model:
        return self.holder["model"]

    def manifest(self, version: int, path: str = "good", **changes: Any) -> dict[str, Any]:
        doc = {**BASE_MANIFEST, "version": version, "url": self.url(path)}
        doc["expires_at"] = format_time(utcnow() + timedelta(days=1))
        doc.update(changes)
        return doc

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.files.port}/{path}"

    def signed(self, version: int, path: str = "good", **changes: Any) -> bytes:
        return json.dumps(self.signer.sign(self.manifest(version, path, **changes))).encode()


@pytest.fixture
def device(files: Files, tmp_path: Path) -> Device:
    files.routes["good"] = MODEL_BYTES
    signer = Signer.generate("gw-test")
    metrics = Metrics()
    holder: dict[str, Model] = {"model": load_default_model()}
    models_dir = tmp_path / "models"
    config = UpdateConfig(
        device_id="dev-0001",
        profile="tv",
        models_dir=models_dir,
        scoring_budget_ms=250.0,  # generous: the test machine is shared
        candidates=500,
        download_timeout_s=3.0,
    )
    updater = ModelUpdater(
        config,
        Verifier.from_public_keys([signer.public]),
        metrics,
        running=lambda: holder["model"],
        swap=lambda m: holder.__setitem__("model", m),
    )
    return Device(updater, metrics, signer, models_dir, holder, files)


async def test_a_signed_newer_model_is_downloaded_checked_and_swapped(device: Device) -> None:
    assert device.model.version == 1
    assert await device.updater.handle(device.signed(2)) == "applied"
    assert device.model.version == 2
    assert device.metrics.counters["model_updates_applied"] == 1
    assert device.metrics.counters["models_loaded"] == 1  # a rollout is a model loaded too
    assert device.updater.state["state"] == "applied"
    reloaded = await asyncio.to_thread(load_current, device.models_dir)
    assert reloaded is not None
    assert reloaded.version == 2
    assert await device.updater.handle(device.signed(2)) == "current"


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        ("unsigned", lambda d: json.dumps(d.manifest(2)).encode()),
        ("bad_signature", lambda d: d.signed(2).replace(b'"version": 2', b'"version": 3')),
        (
            "bad_signature",
            lambda d: json.dumps(Signer.generate("gw-test").sign(d.manifest(2))).encode(),
        ),
        (
            "expired",
            lambda d: d.signed(2, expires_at=format_time(utcnow() - timedelta(seconds=1))),
        ),
        ("wrong_profile", lambda d: d.signed(2, profiles=["hub", "phone"])),
        ("malformed", lambda d: b"{not json"),
        (
            "malformed",
            lambda d: json.dumps(d.signer.sign({"expires_at": "2099-01-01T00:00:00Z"})).encode(),
        ),
        ("oversized_manifest", lambda d: b" " * (300 * 1024)),
        ("malformed", lambda d: b'{"v":1,"x":' + b"[" * 200_000),  # once a RecursionError
        ("malformed", lambda d: d.signed(2, later={"a": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]})),
        ("tampered", lambda d: d.signed(2, sha256=hashlib.sha256(b"other").hexdigest())),
        ("truncated", lambda d: d.signed(2, "cut")),
        ("oversized", lambda d: d.signed(2, size=len(MODEL_BYTES) - 1)),
        ("truncated", lambda d: d.signed(2, size=len(MODEL_BYTES) + 10)),
        ("oversized", lambda d: d.signed(2, "endless")),
        ("timeout", lambda d: d.signed(2, "stall")),
        ("download_failed", lambda d: d.signed(2, "missing-file")),
        (
            "health_failed",
            lambda d: d.signed(
                2,
                feature_spec={
                    **BASE_MANIFEST["feature_spec"],
                    "features": [
                        *BASE_MANIFEST["feature_spec"]["features"][:-1],
                        {"name": "user.mind_reading", "scale": 1.0},
                    ],
                },
            ),
        ),
    ],
)
async def test_bad_manifests_and_files_are_refused_counted_and_reported(
    device: Device, reason: str, make: Any
) -> None:
    if reason == "download_failed":
        device.files.routes.pop("missing-file", None)
    running = device.model
    verdict = await asyncio.wait_for(device.updater.handle(make(device)), 30)
    assert verdict == reason
    assert device.model is running  # the running model is untouched
    assert device.metrics.counters[f"model_update_refused_{reason}"] == 1
    assert device.metrics.counters["model_updates_refused"] == 1
    assert device.updater.state["state"] == "refused"
    assert device.updater.state["last_reason"] == reason
    assert device.updater.state["last_error"]
    assert await asyncio.to_thread(load_current, device.models_dir) is None
    # still works after (a newer version: a file refused for what it is stays refused)
    assert await device.updater.handle(device.signed(3)) == "applied"


async def test_an_older_version_is_a_refused_rollback(device: Device) -> None:
    assert await device.updater.handle(device.signed(3)) == "applied"
    assert await device.updater.handle(device.signed(2)) == "rollback"
    assert device.model.version == 3
    assert device.metrics.counters["model_update_refused_rollback"] == 1


async def test_staged_rollout_reaches_only_devices_in_the_percentage(device: Device) -> None:
    manifest_key = rollout_key(ModelManifest.model_validate(device.manifest(2)))
    inside = in_rollout("dev-0001", manifest_key, 50)
    verdict = await device.updater.handle(device.signed(2, rollout=50))
    assert verdict == ("applied" if inside else "waiting")
    assert await device.updater.handle(device.signed(3, rollout=0)) == "waiting"
    assert device.model.version == (2 if inside else 1)
    assert await device.updater.handle(device.signed(3, rollout=100)) == "applied"
    shares = [in_rollout(f"dev-{i:04d}", manifest_key, 10) for i in range(2000)]
    assert 0.07 < sum(shares) / len(shares) < 0.13


async def test_a_slow_model_is_refused_by_the_scoring_budget(device: Device) -> None:
    object.__setattr__(device.updater.config, "scoring_budget_ms", 1e-6)
    assert await device.updater.handle(device.signed(2)) == "too_slow"
    assert device.model.version == 1


async def test_a_rollout_to_a_cohort_reaches_only_its_devices_share(device: Device) -> None:
    targeted = device.manifest(2, cohorts=["region:cn-east"], rollout=20)
    manifest = ModelManifest.model_validate(targeted)
    assert not device.updater.in_cohort(manifest)  # a tv with cohorts all, profile:tv
    assert await device.updater.handle(device.signed(2, cohorts=["region:cn-east"])) == "waiting"
    assert device.metrics.counters["model_update_not_in_cohort"] == 1
    object.__setattr__(device.updater.config, "cohorts", ("all", "region:cn-east"))
    assert device.updater.in_cohort(manifest)
    assert await device.updater.handle(device.signed(2, cohorts=["region:cn-east"])) == "applied"
    # of a fleet where a third is in cn-east, a 20 % rollout reaches 20 % of that third
    key = rollout_key(manifest)
    fleet = [(f"dev-{i:04d}", i % 3 == 0) for i in range(3000)]
    reached = [east for dev, east in fleet if east and in_rollout(dev, key, manifest.rollout)]
    assert 0.16 < len(reached) / 1000 < 0.24


async def test_a_run_time_failure_goes_back_remembered_and_reported(device: Device) -> None:
    reports: list[Any] = []
    device.updater._on_report = lambda: reports.append(device.updater.report)
    default = device.model
    assert await device.updater.handle(device.signed(2)) == "applied"
    assert reports[-1].status == "applied"
    assert reports[-1].version == 2
    bad = device.model
    device.holder["model"] = default  # what the agent does (`Agent._model_failed`)
    device.updater.rolled_back(bad, default, "boom")
    await device.updater.close()
    report = device.updater.report
    assert report is not None
    assert (report.version, report.status, report.reason, report.running) == (
        2,
        "rolled_back",
        "runtime_failed",
        1,
    )
    assert device.metrics.counters["model_rollbacks"] == 1
    # the shipped default is not on disk: the next start runs it, not the failed v2
    assert await asyncio.to_thread(load_current, device.models_dir) is None
    # the retained manifest of v2 comes again on every reconnect: not fetched again
    assert await device.updater.handle(device.signed(2)) == "known_refused"
    assert device.metrics.counters["model_updates_applied"] == 1
    # remembered across a restart
    again = ModelUpdater(
        device.updater.config,
        device.updater.verifier,
        Metrics(),
        running=lambda: default,
        swap=lambda m: None,
    )
    await again.open()
    assert again.refused == {(2, bad.sha256): "runtime_failed"}
    assert again.report is not None
    assert again.report.model_dump(exclude={"at"}) == report.model_dump(exclude={"at"})
    assert await again.handle(device.signed(2)) == "known_refused"


async def test_a_health_check_failure_is_remembered_and_not_downloaded_again(
    device: Device,
) -> None:
    object.__setattr__(device.updater.config, "scoring_budget_ms", 1e-6)
    assert await device.updater.handle(device.signed(2)) == "too_slow"
    report = device.updater.report
    assert report is not None
    assert (report.version, report.status, report.reason) == (2, "failed", "too_slow")
    for _ in range(3):  # reconnects: the same retained manifest each time
        assert await device.updater.handle(device.signed(2, rollout=100)) == "known_refused"
    assert device.metrics.counters["model_update_known_refused"] == 3
    assert device.metrics.counters["model_updates_refused"] == 1


async def test_at_start_an_unusable_current_model_falls_back_to_the_kept_previous(
    device: Device,
) -> None:
    assert await device.updater.handle(device.signed(2)) == "applied"
    assert await device.updater.handle(device.signed(3)) == "applied"
    current, previous = await asyncio.to_thread(load_kept, device.models_dir)
    assert (current and current.version, previous and previous.version) == (3, 2)
    # v3 rolled back at run time: the next start runs v2, the kept previous, not the default
    bad = {(3, current.sha256)} if current else set()
    memory = dict.fromkeys(bad, "runtime_failed")
    current, previous = await asyncio.to_thread(load_kept, device.models_dir, memory)
    assert current is not None
    assert (current.version, previous) == (2, None)
    assert json.loads((device.models_dir / "current").read_text()) == {"version": 2}
    # a damaged current file: the same
    assert await device.updater.handle(device.signed(4)) == "applied"
    (device.models_dir / "v4.onnx").write_bytes(b"\0" * len(MODEL_BYTES))
    reloaded = await asyncio.to_thread(load_current, device.models_dir)
    assert reloaded is not None
    assert reloaded.version == 3


async def test_fields_a_newer_gateway_added_are_signed_over_ignored_and_kept(
    device: Device,
) -> None:
    later: dict[str, Any] = {
        "canary": {"wave": 1, "hold_s": 600},
        "feature_spec": {**BASE_MANIFEST["feature_spec"], "normalizer": "zscore"},
    }
    forged = json.loads(device.signed(2, **later))
    forged["canary"]["wave"] = 2  # a field this agent ignores, changed after signing
    assert await device.updater.handle(json.dumps(forged).encode()) == "bad_signature"
    assert await device.updater.handle(device.signed(2, **later)) == "applied"
    assert device.model.version == 2
    assert device.metrics.counters["downlink_unknown_fields"] == 2
    kept = json.loads((device.models_dir / "v2.json").read_text())
    assert kept["canary"] == later["canary"]  # kept as signed
    reloaded = await asyncio.to_thread(load_current, device.models_dir)  # the next start
    assert reloaded is not None
    assert reloaded.version == 2
