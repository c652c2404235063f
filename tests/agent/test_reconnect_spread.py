"""A fleet that lost its broker together comes back spread: each agent's first reconnect
after a broker restart waits uniform in [0, `mqtt_reconnect_s`] (full jitter), not all within
a quarter second as before (uniform in [0.25, 0.5] s: 5,000 devices at 20,000 connects/s)."""

from __future__ import annotations

import statistics
from pathlib import Path

from agent.config import load_settings
from agent.link.session import Link
from agent.runtime.metrics import Metrics
from protocol import codec
from protocol.envelopes import State, TrustFile
from protocol.signing import Signer


async def _ignore(message: object) -> None:
    return None


def _birth() -> State:
    raise AssertionError("not connected in this test")


async def test_first_reconnects_of_a_fleet_spread_over_the_whole_window(tmp_path: Path) -> None:
    trust = tmp_path / "trust.json"
    trust.write_bytes(codec.encode(TrustFile(keys=[Signer.generate("k1").public])))
    delays = []
    for n in range(500):
        settings = load_settings(
            profile="tv",
            device_id=f"tv-spread-{n:04d}",
            broker="mqtt://127.0.0.1:9",
            data_dir=tmp_path / "d",
            api_port=None,
            trust=trust,
            overrides={"mqtt_reconnect_s": 4.0},
            environ={},
        )
        link = Link(
            settings,
            birth=_birth,
            on_message=_ignore,
            on_connected=lambda: None,
            metrics=Metrics(),
        )
        delays.append(link.machine.backoff.next())
    assert max(delays) <= 4.0
    assert min(delays) < 0.2  # the window starts at once...
    assert statistics.pstdev(delays) > 0.9  # ...and is used throughout (uniform: 1.15)
    assert sum(1 for d in delays if d < 2.0) > 150  # the lower half is used too
