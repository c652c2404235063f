"""Feature specs v1 and v2: the names match docs/architecture.md, in order, and specs keep them
so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.features import FEATURE_NAMES, FEATURE_NAMES_V2, PERSONAL, build_spec
from protocol.codec import validate
from protocol.envelopes import FeatureSpec

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
F = len(FEATURE_NAMES)


def _documented() -> tuple[list[str], set[str]]:
    """Feature names and personal ones from the docs table, `<x>` rows expanded."""
    section = DOCS.read_text(encoding="utf-8").split("## The model's features", 1)[1]
    names: list[str] = []
    personal: set[str] = set()
    for row in re.findall(r"^\| (`.*?) \| .*? \| (yes|no) \|$", section, flags=re.M):
        cell, is_personal = row
        expanded: list[str] = []
        for template in re.findall(r"`([^`]+)`", cell.split(" for ")[0]):
            if "<" in template:
                values = cell.split(" in ", 1)[1].split(", ")
                expanded += [re.sub(r"<\w+>", v.strip(), template) for v in values]
            else:
                expanded.append(template)
        names += expanded
        if is_personal == "yes":
            personal.update(expanded)
    return names, personal


def test_names_are_the_documented_table_in_order() -> None:
    names, personal = _documented()
    assert tuple(names) == FEATURE_NAMES_V2
    assert FEATURE_NAMES_V2[: len(FEATURE_NAMES)] == FEATURE_NAMES
    assert personal == PERSONAL
    assert len(FEATURE_NAMES) == 20


def test_v2_spec_names_the_household_and_says_so() -> None:
    width = len(FEATURE_NAMES_V2)
    spec = build_spec([0.0] * width, [1.0] * width, FEATURE_NAMES_V2)
    assert spec.version == 2
    assert spec.names[-4:] == [
        "household.consumable_need",
        "household.category_count_24h",
        "household.active_devices",
        "household.member_tier",
    ]
    assert all(f.personal for f in spec.features[-4:])
    assert build_spec([0.0] * F, [1.0] * F).version == 1
    with pytest.raises(ValueError, match="needs feature spec version 2"):
        FeatureSpec.model_validate({**spec.model_dump(mode="json"), "version": 1})


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@given(st.lists(finite, min_size=F, max_size=F), st.lists(positive, min_size=F, max_size=F))
def test_spec_names_unique_and_in_fixed_order(means: list[float], scales: list[float]) -> None:
    spec = build_spec(means, scales)
    assert spec.names == list(FEATURE_NAMES)
    assert len(set(spec.names)) == len(spec.names)
    assert [f.personal for f in spec.features] == [n in PERSONAL for n in FEATURE_NAMES]
    assert [f.mean for f in spec.features] == means
    assert [f.scale for f in spec.features] == scales
    assert validate(spec.model_dump(mode="json"), FeatureSpec) == spec


def test_spec_refuses_misaligned_statistics() -> None:
    with pytest.raises(ValueError, match="expected 20"):
        build_spec([0.0] * (F - 1), [1.0] * F)
