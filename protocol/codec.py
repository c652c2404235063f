"""Bytes <-> envelopes: JSON objects, zlib on the uplink, every size bounded before work is done.

A payload whose first byte is not `{` is a zlib stream (PROTOCOL.md). Decompression stops at
the bound, so a zlib bomb costs at most `max_decompressed` bytes of memory.

Two readers: `validate` refuses fields the envelope does not know (the gateway reading the
uplink); `validate_tolerant` ignores them and says which they were (a device reading what the
cloud sends, which a newer gateway may have extended). Both run only on an object that
`decode_object` has already bounded in size and depth.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from protocol.errors import (
    InvalidMessage,
    MalformedPayload,
    NonFiniteNumber,
    PayloadTooLarge,
    UnsupportedVersion,
)

MAX_COMPRESSED = 256 * 1024
MAX_DECOMPRESSED = 2 * 1024 * 1024
MAX_DEPTH = 16

M = TypeVar("M", bound=BaseModel)


def dumps(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON for the wire."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode(message: BaseModel, *, compress: bool | None = False) -> bytes:
    """Encode a message; `compress=None` zlibs it only when that saves bytes."""
    raw = dumps(message.model_dump(mode="json", exclude_none=True))
    return maybe_compress(raw, compress)


def encode_dict(obj: dict[str, Any], *, compress: bool | None = False) -> bytes:
    return maybe_compress(dumps(obj), compress)


def maybe_compress(raw: bytes, compress: bool | None) -> bytes:
    if compress is False:
        return raw
    packed = zlib.compress(raw, 6)
    if compress is None and len(packed) >= len(raw):
        return raw
    return packed


def inflate(payload: bytes, max_decompressed: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress a zlib stream, refusing anything that would pass `max_decompressed`."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, max_decompressed + 1)
    except zlib.error as exc:
        raise MalformedPayload(f"broken zlib stream: {exc}") from exc
    if len(out) > max_decompressed or inflater.unconsumed_tail:
        raise PayloadTooLarge(len(out), max_decompressed, "decompressed payload")
    if not inflater.eof:
        raise MalformedPayload("truncated zlib stream")
    if inflater.unused_data:
        raise MalformedPayload("trailing bytes after the zlib stream")
    return out


class _NonFinite:
    """Stands in for a `NaN`, `Infinity` or overflowing literal until its path is known."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _float_or_marker(literal: str) -> float | _NonFinite:
    value = float(literal)
    return value if math.isfinite(value) else _NonFinite(literal)


def _int_or_marker(literal: str) -> int | _NonFinite:
    # An integer literal is exact in Python, but no peer of ours can hold one past 2**63
    # (SQLite INTEGER, PostgreSQL BIGINT, JavaScript): refused like an overflowing float.
    if len(literal) > 20:
        return _NonFinite(literal if len(literal) <= 24 else literal[:24] + "…")
    value = int(literal)
    return value if -(2**63) <= value < 2**63 else _NonFinite(literal)


def _find_marker(obj: object) -> tuple[str, str] | None:
    """The dotted path and literal of the first non-finite marker in parsed JSON."""
    stack: list[tuple[object, tuple[str, ...]]] = [(obj, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _NonFinite):
            return ".".join(path) or "(root)", node.literal
        if isinstance(node, dict):
            stack.extend((v, (*path, str(k))) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((v, (*path, str(i))) for i, v in reversed(list(enumerate(node))))
    return None


class _Found(Exception):
    """A non-finite number met by the first parse; never leaves `loads_finite`."""


def _float_or_raise(literal: str) -> float:
    value = float(literal)
    if value - value != 0.0:  # inf - inf is nan; a finite value gives 0.0
        raise _Found
    return value


def _int_or_raise(literal: str) -> int:
    value = int(literal)
    if len(literal) > 18 and not -(2**63) <= value < 2**63:
        raise _Found
    return value


def _constant_raise(_literal: str) -> Any:
    raise _Found


def loads_finite(text: str | bytes) -> Any:
    """`json.loads` for input from outside: every number finite and within 64 bits.

    `NaN`, `Infinity`, `-Infinity`, a float literal that overflows (`1e400`) and an integer
    outside the signed 64-bit range raise `NonFiniteNumber` naming the dotted path of the
    first one (`signals.0.attrs.price`); other errors are `json.JSONDecodeError`,
    `UnicodeDecodeError` or `RecursionError`, as from `json.loads`. Input without one costs
    one parse with cheap checks; the path is found by a second parse only when there is one.
    """
    try:
        return json.loads(
            text,
            parse_constant=_constant_raise,
            parse_float=_float_or_raise,
            parse_int=_int_or_raise,
        )
    except _Found:
        pass
    obj = json.loads(
        text, parse_constant=_NonFinite, parse_float=_float_or_marker, parse_int=_int_or_marker
    )
    found = _find_marker(obj)
    path, literal = found if found is not None else ("(root)", "?")
    raise NonFiniteNumber(path, literal)


def _depth(obj: object, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping early past `limit`."""
    stack: list[tuple[object, int]] = [(obj, 1)]
    deepest = 0
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(node, dict):
            stack.extend((child, level + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, level + 1) for child in node)
    return deepest


def decode_object(
    payload: bytes,
    *,
    allow_zlib: bool = False,
    max_compressed: int = MAX_COMPRESSED,
    max_decompressed: int = MAX_DECOMPRESSED,
) -> dict[str, Any]:
    """Bytes to a JSON object with `v: 1`, or a ProtocolError saying what is wrong."""
    if len(payload) > max_compressed:
        raise PayloadTooLarge(len(payload), max_compressed)
    if not payload:
        raise MalformedPayload("empty payload")
    if payload[:1] != b"{":
        if not allow_zlib:
            raise MalformedPayload("payload is not a JSON object (first byte is not '{')")
        payload = inflate(payload, max_decompressed)
    elif len(payload) > max_decompressed:
        raise PayloadTooLarge(len(payload), max_decompressed)
    try:
        text = payload.decode("utf-8")
        obj = loads_finite(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedPayload(f"not UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedPayload(f"payload is a JSON {type(obj).__name__}, not an object")
    if _depth(obj, MAX_DEPTH) > MAX_DEPTH:
        raise MalformedPayload(f"payload nests deeper than {MAX_DEPTH} levels")
    version = obj.get("v")
    if version != 1 or isinstance(version, bool):
        raise UnsupportedVersion(version)
    return obj


def validate(obj: dict[str, Any], model: type[M]) -> M:
    """A parsed object to an envelope; field errors carry their dotted path."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise InvalidMessage(model.__name__, field_errors(exc)) from exc


def validate_tolerant(obj: dict[str, Any], model: type[M]) -> tuple[M, tuple[str, ...]]:
    """A parsed object to an envelope, ignoring fields this build does not know (at any depth).

    Returns the envelope and the dotted paths of the ignored fields (`offers.3.badge`), empty
    for a message this build knows entirely (validated once; with unknown fields, twice).
    Every known field is checked as strictly as by `validate`.
    """
    try:
        return model.model_validate(obj), ()
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        wrong = [err for err in errors if err["type"] != "extra_forbidden"]
        if wrong:  # reported without the unknown fields, which are not what is wrong
            raise InvalidMessage(model.__name__, _field_errors(wrong)) from exc
        unknown = tuple(_loc(err["loc"]) for err in errors)
    try:
        return model.model_validate(obj, extra="ignore"), unknown
    except ValidationError as exc:  # not expected: the strict pass found only unknown fields
        raise InvalidMessage(model.__name__, field_errors(exc)) from exc


def decode(
    payload: bytes,
    model: type[M],
    *,
    allow_zlib: bool = False,
    max_compressed: int = MAX_COMPRESSED,
    max_decompressed: int = MAX_DECOMPRESSED,
) -> M:
    obj = decode_object(
        payload,
        allow_zlib=allow_zlib,
        max_compressed=max_compressed,
        max_decompressed=max_decompressed,
    )
    return validate(obj, model)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """pydantic errors as `[{"loc": "signals.3.kind", "msg": ...}]`, at most 20."""
    return _field_errors(exc.errors(include_url=False, include_input=False))


def _field_errors(errors: list[ErrorDetails]) -> list[dict[str, str]]:
    return [{"loc": _loc(err["loc"]), "msg": err["msg"]} for err in errors[:20]]


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(root)"
