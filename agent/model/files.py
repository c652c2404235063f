"""The model directory on disk: durable file writes, the `current` pointer, kept versions and
the remembered refusals (`status.json`). Blocking: callers run these in a thread.

On disk (`DATA_DIR/models/`): `v{N}.onnx` and `v{N}.json` (the signed manifest), each
written to a temporary file, fsynced and renamed; then `current` (a small JSON pointer) is
replaced the same way and the folder fsynced. A power cut leaves `current` naming the old
or the new pair, both complete: never a mix. A kept file is verified against its manifest
(size, sha256) by `agent.model.scoring.load_model` before it serves.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agent.errors import ModelRejected
from agent.model.scoring import Model, load_model
from daemonkit.files import fsync_dir, write_durable
from protocol.codec import loads_finite
from protocol.envelopes import ModelUpdateReport
from protocol.errors import ProtocolError

log = logging.getLogger(__name__)

POINTER = "current"
STATUS = "status.json"
KEEP_VERSIONS = 2

Refusals = dict[tuple[int, str], str]
"""(version, sha256) -> the reason that model was refused or rolled back."""


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


def _kept_versions(models_dir: Path) -> list[int]:
    return sorted(
        (int(p.stem[1:]) for p in models_dir.glob("v*.onnx") if p.stem[1:].isdigit()),
        reverse=True,
    )


def _load_version(models_dir: Path, version: int, bad: Refusals) -> Model | None:
    try:
        manifest = loads_finite((models_dir / f"v{version}.json").read_bytes())
        model = load_model(models_dir / f"v{version}.onnx", manifest)
    except (OSError, ValueError, KeyError, TypeError, ProtocolError, ModelRejected) as exc:
        log.error("kept model v%d in %s is unusable: %s", version, models_dir, exc)  # noqa: TRY400
        return None
    if (model.version, model.sha256) in bad:
        log.warning(
            "kept model v%d was refused before (%s)", version, bad[(model.version, model.sha256)]
        )
        return None
    return model


def load_kept(models_dir: Path, bad: Refusals | None = None) -> tuple[Model | None, Model | None]:
    """`(current, previous)`: the model `current` names and the newest good one kept below it.

    When the current one is unusable (does not verify, or was rolled back) the previous kept
    version becomes current (the pointer is moved to it); None when no kept version serves
    (the caller runs the shipped default). Versions above the pointer (an install that never
    passed its health check) are never considered.
    """
    bad = bad or {}
    pointer = models_dir / POINTER
    if not pointer.is_file():
        return None, None
    try:
        named = int(loads_finite(pointer.read_bytes())["version"])
    except (OSError, ValueError, KeyError, TypeError, ProtocolError) as exc:
        log.error("the model pointer in %s is unusable: %s", models_dir, exc)  # noqa: TRY400
        return None, None
    found: list[Model] = []
    for version in _kept_versions(models_dir):
        if version > named:
            continue
        model = _load_version(models_dir, version, bad)
        if model is not None:
            found.append(model)
            if len(found) == 2:
                break
    if not found:
        return None, None
    current = found[0]
    if current.version != named:
        log.warning("model v%d unusable; back to the kept v%d", named, current.version)
        point_to(models_dir, current.version)
    return current, (found[1] if len(found) > 1 else None)


def load_current(models_dir: Path) -> Model | None:
    """The model `current` names, verified against its stored manifest (or, when it does not
    verify, the newest good version kept below it); None when there is none."""
    return load_kept(models_dir, load_status(models_dir)[0])[0]


def revert(models_dir: Path, good_version: int | None) -> None:
    """Point `current` back at the kept `good_version`; with none kept (the shipped default
    runs), remove the pointer so the next start runs the default."""
    if good_version is not None and (models_dir / f"v{good_version}.onnx").is_file():
        point_to(models_dir, good_version)
        return
    (models_dir / POINTER).unlink(missing_ok=True)
    if models_dir.is_dir():
        fsync_dir(models_dir)


def load_status(models_dir: Path) -> tuple[Refusals, ModelUpdateReport | None]:
    """Remembered refusals and the last report (`status.json`); empty when absent or bad."""
    try:
        doc = loads_finite((models_dir / STATUS).read_bytes())
        refused = {(int(v), str(sha)): str(reason) for v, sha, reason in doc.get("refused", [])}
        report = doc.get("report")
        return refused, ModelUpdateReport.model_validate(report) if report else None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, TypeError, ProtocolError) as exc:
        log.warning("ignoring the model update status in %s: %s", models_dir, exc)
        return {}, None


def save_status(models_dir: Path, refused: Refusals, report: ModelUpdateReport | None) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "refused": [[v, sha, reason] for (v, sha), reason in refused.items()],
        "report": report.model_dump(mode="json", exclude_none=True) if report else None,
    }
    write_durable(models_dir / STATUS, json.dumps(doc).encode())
