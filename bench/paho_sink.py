"""Baselines of `gateway_ingest_signals_per_s`: a bare paho subscriber that only counts;
(`--read`) one that only inflates and parses the JSON of each batch, the least any consumer
that looks at the signals must do; and (`--validate`) one that also validates each batch the
way the gateway must before it may store anything (bounded inflate, JSON, the pydantic
`Batch`), but stores nothing; (`--msgspec`) the same checks with msgspec instead of pydantic
(bench/msgspec_batch.py).

`python -m bench.paho_sink PORT TOPIC COUNT [--read | --validate | --msgspec]`: prints
"ready", then, once COUNT messages arrived, the monotonic time of the last one (the bench
compares it with its start).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import zlib
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from protocol import codec
from protocol.envelopes import Batch


def main() -> int:
    port, topic, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    validate = "--validate" in sys.argv[4:]
    read = "--read" in sys.argv[4:]
    fast = "--msgspec" in sys.argv[4:]
    if fast:  # msgspec comes with the dev extras only
        from bench import msgspec_batch  # noqa: PLC0415
    got = 0
    done = threading.Event()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        nonlocal got
        if validate:
            codec.decode(msg.payload, Batch, allow_zlib=True)
        elif fast:
            msgspec_batch.decode(msg.payload)
        elif read:
            payload = msg.payload
            json.loads(payload if payload[:1] == b"{" else zlib.decompress(payload))
        got += 1
        if got >= count:
            done.set()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        sys.stdout.write("ready\n")
        sys.stdout.flush()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sink")
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(600)
    sys.stdout.write(f"{time.monotonic()}\n")
    sys.stdout.flush()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
