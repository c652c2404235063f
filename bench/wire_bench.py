"""Uplink bytes per signal: Edgemart's batches vs one JSON message per event (the baseline)."""

from __future__ import annotations

import json

import numpy as np

from bench.record import Record
from protocol import codec
from protocol.envelopes import Batch, Signal
from protocol.ids import format_time, new_id, utcnow
from simulators.world import make_world, usage_signals

BATCH = 500


def _signals(n: int) -> list[Signal]:
    world = make_world(3, households=4)
    persona = world.persona(0)
    script = usage_signals(persona, "tv", np.random.default_rng(3), n)
    now = utcnow()
    return [Signal(id=new_id(), kind=s["kind"], at=now, attrs=s["attrs"]) for s in script]


def run() -> list[Record]:
    signals = _signals(BATCH)
    batch = Batch(
        device_id="tv-0001",
        seq=1,
        sent_at=utcnow(),
        agent_version="0.1.0",
        model_version=1,
        signals=signals,
    )
    batched = len(codec.encode(batch, compress=None)) / BATCH
    per_event = (
        sum(
            len(
                json.dumps(
                    {
                        "device_id": "tv-0001",
                        "sent_at": format_time(utcnow()),
                        "agent_version": "0.1.0",
                        **s.model_dump(mode="json"),
                    }
                ).encode()
            )
            for s in signals
        )
        / BATCH
    )
    return [
        Record(
            "wire_bytes_per_signal_raw",
            batched,
            "bytes/signal",
            "one JSON message per event",
            per_event,
            f"{BATCH}-signal zlib batch of scripted TV usage; payload bytes only",
        ),
    ]
