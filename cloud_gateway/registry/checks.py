"""The model registry's pure checks: a model file against its manifest, rollout cohorts,
rollout health against the halt thresholds. Raise domain errors; no I/O beyond onnxruntime
opening bytes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cloud_gateway.errors import Conflict, InvalidInput
from protocol.envelopes import ModelManifest
from protocol.vocabulary import PROFILES


def check_model_bytes(manifest: ModelManifest, data: bytes) -> None:
    """Raise InvalidInput unless `data` is the file `manifest` describes and opens."""
    if len(data) != manifest.size:
        raise InvalidInput(f"model: {len(data)} bytes, the manifest says {manifest.size}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.sha256:
        raise InvalidInput(f"model: sha256 {digest}, the manifest says {manifest.sha256}")
    import onnxruntime  # noqa: PLC0415  # heavy; only the registry needs it

    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise InvalidInput(f"model: onnxruntime cannot open it: {exc}") from exc
    spec = manifest.feature_spec
    inputs = session.get_inputs()
    shape = list(inputs[0].shape or []) if len(inputs) == 1 else []
    if len(inputs) != 1 or inputs[0].name != spec.input_name or len(shape) != 2:
        raise InvalidInput(f"model: expected one input {spec.input_name!r} of shape [N, F]")
    if isinstance(shape[1], int) and shape[1] != len(spec.features):
        raise InvalidInput(
            f"model: takes {shape[1]} features, the spec lists {len(spec.features)}",
        )
    if spec.output_name not in {o.name for o in session.get_outputs()}:
        raise InvalidInput(f"model: no output {spec.output_name!r}")


def cohort_profiles(cohort: str, profiles: list[str]) -> list[str]:
    """The manifest topics a rollout to `cohort` goes to (manifests are retained per profile).

    `profile:<p>` narrows to one profile; any other cohort goes to every profile of the model
    and the devices check the cohort themselves (it is in the signed manifest)."""
    if cohort.startswith("profile:"):
        wanted = cohort[len("profile:") :]
        if wanted not in PROFILES:
            raise InvalidInput(f"cohort {cohort!r}: no such profile")
        if wanted not in profiles:
            raise Conflict(f"the model is not built for profile {wanted!r}")
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
