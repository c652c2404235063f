"""docs/protocol.md is generated from the models; it fails here when someone forgets."""

from __future__ import annotations

from pathlib import Path

from protocol.docs import render

ROOT = Path(__file__).resolve().parents[1]


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
