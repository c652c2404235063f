"""Feature spec v1: the canonical feature names, in model-input order, and which are personal.

The table is docs/architecture.md, "The model's features". A model's `FeatureSpec` lists
these names in this order with the `mean`/`scale` fitted on its training data; the agent
computes `(x - mean) / scale` and feeds the result to the ONNX graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.envelopes import FeatureDef, FeatureSpec
from protocol.vocabulary import FEATURE_NAMES, OFFER_TYPES, PERSONAL_FEATURES, PROFILES

__all__ = ["FEATURE_NAMES", "OFFER_TYPES", "PERSONAL", "PROFILES", "build_spec"]


PERSONAL = PERSONAL_FEATURES


def build_spec(means: Sequence[float], scales: Sequence[float]) -> FeatureSpec:
    """The v1 `FeatureSpec` for fitted `means`/`scales` (aligned with `FEATURE_NAMES`).

    Each feature's `default` is its mean: a value the agent cannot compute (no consent,
    no data) scales to 0 and so contributes nothing to the score.
    """
    if len(means) != len(FEATURE_NAMES) or len(scales) != len(FEATURE_NAMES):
        raise ValueError(
            f"expected {len(FEATURE_NAMES)} means and scales, got {len(means)} and {len(scales)}"
        )
    return FeatureSpec(
        features=[
            FeatureDef(
                name=name,
                default=float(mean),
                mean=float(mean),
                scale=float(scale),
                personal=name in PERSONAL,
            )
            for name, mean, scale in zip(FEATURE_NAMES, means, scales, strict=True)
        ]
    )
