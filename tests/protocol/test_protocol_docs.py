"""docs/protocol.md is generated from the models; it fails here when someone forgets."""

from __future__ import annotations

from pathlib import Path

from protocol.docs import ALL_MODELS, directions, render

ROOT = Path(__file__).resolve().parents[2]


def test_protocol_reference_is_current() -> None:
    committed = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/protocol.md is stale: run python -m protocol.docs"


def test_reference_lists_every_fixed_topic_and_message() -> None:
    text = render()
    for needle in (
        "/up/batch",
        "/down/ack",
        "/cohort/{cohort}/offers",
        "## OfferBundle",
        "## Batch",
        "## Ack",
        "## ModelManifest",
    ):
        assert needle in text


def test_every_model_has_one_reader_and_the_schemas_say_what_it_accepts() -> None:
    """Uplink parts are refused with unknown fields, downlink parts are not: no model may be
    both (its reference would have to say two things)."""
    travels = directions()
    assert {m.__name__ for m in ALL_MODELS} == set(travels)
    assert all(len(d) == 1 for d in travels.values()), travels
    text = render()
    for model in ALL_MODELS:
        section = text.split(f"\n## {model.__name__}\n", 1)[1].split("\n## ", 1)[0]
        strict = '"additionalProperties": false' in section
        assert strict == (travels[model.__name__] == {"uplink"}), model.__name__
