"""Feature specs v1 and v2: the canonical feature names, in model-input order, and which are
personal. v2 is v1 followed by the household's features (`HOUSEHOLD_FEATURE_NAMES`).

The table is docs/architecture.md, "The model's features". A model's `FeatureSpec` lists
these names in this order with the `mean`/`scale` fitted on its training data; the agent
computes `(x - mean) / scale` and feeds the result to the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.envelopes import FeatureDef, FeatureSpec
from protocol.vocabulary import (
    FEATURE_NAMES,
    FEATURE_NAMES_V2,
    HOUSEHOLD_FEATURE_NAMES,
    OFFER_TYPES,
    PERSONAL_FEATURES,
    PROFILES,
)

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_NAMES_V2",
    "FEATURE_SETS",
    "OFFER_TYPES",
    "PERSONAL",
    "PROFILES",
    "build_spec",
]

FEATURE_SETS: dict[int, tuple[str, ...]] = {1: FEATURE_NAMES, 2: FEATURE_NAMES_V2}
"""The feature spec version -> its names, in model-input order."""


PERSONAL = PERSONAL_FEATURES


def build_spec(
    means: Sequence[float], scales: Sequence[float], names: Sequence[str] = FEATURE_NAMES
) -> FeatureSpec:
    """The `FeatureSpec` for fitted `means`/`scales` aligned with `names` (version 2 when it
    names a household feature, else 1).

    Each feature's `default` is its mean: a value the agent cannot compute (no consent,
    no data) scales to 0 and so contributes nothing to the score.
    """
    if len(means) != len(names) or len(scales) != len(names):
        raise ValueError(
            f"expected {len(names)} means and scales, got {len(means)} and {len(scales)}"
        )
    household = any(name in HOUSEHOLD_FEATURE_NAMES for name in names)
    return FeatureSpec(
        version=2 if household else 1,
        features=[
            FeatureDef(
                name=name,
                default=float(mean),
                mean=float(mean),
                scale=float(scale),
                personal=name in PERSONAL,
            )
            for name, mean, scale in zip(names, means, scales, strict=True)
        ],
    )
