"""Hypothesis against the local API in-process, with what broke it before: non-finite number
literals (`NaN`, `Infinity`, `1e400`), integers past 64 bits, times at the ends of the calendar
and with every offset, odd Unicode (lone surrogates, NUL, bidi controls, combining marks) in
kinds, attrs, ids and keys. Every answer is a 2xx or a 4xx with the documented error body,
never a 5xx; nothing non-finite is stored; the agent still takes a good signal afterwards.
(`test_agent_api_fuzz.py` throws generic hostile requests at a real process.)"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.local_device import Client, Device

NUMBERS = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400", "9" * 30, "-" + "9" * 25,
     "9223372036854775807", "9223372036854775808", "-9223372036854775809", "0.1", "-0", "1E5"]
)  # fmt: skip
ODD = st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\u202e", "e\u0301", "\ufeff", "\U0001f600", "\u0663", "\uffff"]
)
TEXT = st.one_of(ODD, st.text(max_size=20), st.tuples(ODD, st.text(max_size=5)).map("".join))
YEARS = st.sampled_from(["0001", "9999", "0001", "9999", "0000", "1970", "2026", "10000"])
OFFSETS = st.sampled_from(["+14:00", "-14:00", "+23:59", "-23:59", "Z", "z", "+24:00", "", "+00"])
TIMES = st.one_of(
    st.builds(
        lambda y, m, d, h, off, frac: f'"{y}-{m}-{d}T{h}{frac}{off}"',
        YEARS,
        st.sampled_from(["01", "12", "01", "12", "13", "00", "02"]),
        st.sampled_from(["01", "31", "01", "31", "29", "30", "00"]),
        st.sampled_from(["00:00:00", "23:59:59", "00:00:00", "23:59:59", "23:59:60", "24:00:00"]),
        OFFSETS,
        st.sampled_from(["", ".5", ".999999", ".1234567890"]),
    ),
    NUMBERS,
    TEXT.map(json.dumps),
)
KINDS = st.sampled_from(["app_open", "search", "purchase", "member_tier", "consumable_level"])


def value() -> st.SearchStrategy[str]:
    return st.one_of(
        NUMBERS,
        TEXT.map(lambda t: json.dumps(t, ensure_ascii=True)),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.just("true"),
        st.just("null"),
        st.just('{"a": [NaN]}'),
    )


@st.composite
def signal(draw: st.DrawFn) -> str:
    kind = draw(st.one_of(KINDS, TEXT).map(lambda k: json.dumps(k, ensure_ascii=True)))
    parts = [f'"kind": {kind}']
    if draw(st.integers(0, 3)):
        parts.append(f'"at": {draw(TIMES)}')
    if draw(st.booleans()):
        names = ["amount", "level", "tier", "query_len", "seconds", "category", "x"]
        keys = draw(st.lists(st.sampled_from(names) | TEXT, max_size=4))
        attrs = ", ".join(f"{json.dumps(k, ensure_ascii=True)}: {draw(value())}" for k in keys)
        parts.append(f'"attrs": {{{attrs}}}')
    if draw(st.booleans()):
        parts.append(f'"id": {draw(TEXT.map(json.dumps) | NUMBERS)}')
    return "{" + ", ".join(parts) + "}"


BODIES = st.one_of(
    st.lists(signal(), min_size=1, max_size=5).map(lambda s: '{"signals": [' + ", ".join(s) + "]}"),
    st.builds(
        lambda o, k: f'{{"offer_id": {o}, "kind": "click", "surface": {k}}}',
        TEXT.map(json.dumps) | NUMBERS,
        TEXT.map(json.dumps) | NUMBERS,
    ),
)
KEYS = st.one_of(  # what a client can put in a header (no control characters)
    st.none(),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_categories=["Cc"]),
        max_size=70,
    ),
)


def finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite(v) for v in obj)
    return True


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=BODIES,
    key=KEYS,
    route=st.sampled_from(["/v1/signals"] * 4 + ["/v1/outcomes", "/v1/claims"]),
)
async def test_hostile_values_are_never_a_5xx_and_never_stored(
    device: Device, client: Client, body: str, key: str | None, route: str
) -> None:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    data = body.encode("utf-8", "surrogatepass")
    response = await client.post(route, data=data, headers=headers)
    assert response.status < 500, (response.status, await response.text(), body)
    answer = await response.json()
    if response.status >= 400:
        assert answer["errors"] and all({"loc", "msg"} <= set(e) for e in answer["errors"])
    store = device.agent.store
    rows = await store.call(
        lambda: store.thread.conn().execute("SELECT attrs FROM signals").fetchall()
    )
    assert all(finite(json.loads(r[0])) for r in rows)
    good = {"signals": [{"kind": "search", "attrs": {"query_len": 3}}]}
    assert (await client.post("/v1/signals", json=good)).status == 202
