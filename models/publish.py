"""Publish a trained model to a gateway: upload file + unsigned manifest, then roll it out.

The gateway holds the signing key (`DATA_DIR/keys`): the operator's token authorises the
upload, the gateway validates the file against the manifest, signs the manifest and
publishes it on `models/{profile}/manifest` when a rollout is set.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp

from models.errors import ModelError
from models.layout import MANIFEST_FILE, MODEL_FILE
from protocol.envelopes import ModelManifest
from protocol.ids import utcnow

TIMEOUT_S = 60.0


def prepare_manifest(
    model_dir: Path,
    *,
    version: int,
    profiles: list[str] | None = None,
    expires_in: timedelta = timedelta(days=90),
    name: str | None = None,
) -> tuple[dict[str, Any], bytes]:
    """The unsigned manifest (version, profiles, expiry set) and the file bytes to upload."""
    try:
        data = (model_dir / MODEL_FILE).read_bytes()
        base = json.loads((model_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{model_dir}: cannot read {MODEL_FILE} and {MANIFEST_FILE}: {exc}"
        ) from exc
    base = {k: v for k, v in base.items() if k not in ("kid", "sig", "url")}
    base.update(version=version, expires_at=utcnow() + expires_in)
    if profiles:
        base["profiles"] = profiles
    if name:
        base["name"] = name
    try:
        manifest = ModelManifest.model_validate(base)
    except ValueError as exc:
        raise ModelError(f"{model_dir / MANIFEST_FILE}: {exc}") from exc
    return manifest.to_wire(), data


async def _problem(resp: aiohttp.ClientResponse) -> ModelError:
    text = await resp.text()
    try:
        detail = json.loads(text).get("detail") or text
    except ValueError:
        detail = text
    return ModelError(f"gateway answered {resp.status}: {str(detail)[:500]}")


async def upload(gateway: str, token: str, manifest: dict[str, Any], data: bytes) -> dict[str, Any]:
    """`POST /v1/models`; returns the registered manifest."""
    form = aiohttp.FormData()
    form.add_field("manifest", json.dumps(manifest), content_type="application/json")
    form.add_field("model", data, filename=MODEL_FILE, content_type="application/octet-stream")
    async with _session(gateway, token) as http, http.post("/v1/models", data=form) as resp:
        if resp.status != 201:
            raise await _problem(resp)
        result: dict[str, Any] = await resp.json()
        return result


async def rollout(
    gateway: str, token: str, version: int, *, percent: int, cohort: str = "all"
) -> dict[str, Any]:
    """`POST /v1/models/{version}/rollout`; returns the signed manifest and profiles."""
    body = {"cohort": cohort, "percent": percent}
    async with (
        _session(gateway, token) as http,
        http.post(f"/v1/models/{version}/rollout", json=body) as resp,
    ):
        if resp.status != 200:
            raise await _problem(resp)
        result: dict[str, Any] = await resp.json()
        return result


def _session(gateway: str, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        gateway.rstrip("/"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=aiohttp.ClientTimeout(total=TIMEOUT_S),
    )


async def publish(
    gateway: str,
    token: str,
    model_dir: Path,
    *,
    version: int,
    profiles: list[str] | None = None,
    expires_in: timedelta = timedelta(days=90),
    percent: int | None = None,
    cohort: str = "all",
) -> dict[str, Any]:
    """Upload the model in `model_dir` as `version`; roll it out when `percent` is given."""
    manifest, data = prepare_manifest(
        model_dir, version=version, profiles=profiles, expires_in=expires_in
    )
    try:
        registered = await upload(gateway, token, manifest, data)
        result: dict[str, Any] = {"registered": registered}
        if percent is not None:
            result["rollout"] = await rollout(
                gateway, token, version, percent=percent, cohort=cohort
            )
    except aiohttp.ClientError as exc:
        raise ModelError(f"cannot reach the gateway at {gateway}: {exc}") from exc
    return result
