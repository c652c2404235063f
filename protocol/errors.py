"""The protocol's errors: one root, narrow subclasses that carry what went wrong and where."""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of everything a peer's bytes can make the protocol layer refuse."""

    reason = "protocol_error"


class PayloadTooLarge(ProtocolError):
    """The payload, compressed or decompressed, is over its bound."""

    reason = "too_large"

    def __init__(self, size: int, limit: int, what: str = "payload") -> None:
        super().__init__(f"{what} of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MalformedPayload(ProtocolError):
    """Not a JSON object, not valid UTF-8, or a broken zlib stream."""

    reason = "malformed"


class NonFiniteNumber(MalformedPayload):
    """A `NaN`, an infinity, or a number no store can hold (`1e400`, an integer past 64 bits):
    malformed JSON for the protocol, counted under a reason of its own."""

    reason = "non_finite"

    def __init__(self, path: str, literal: str) -> None:
        super().__init__(f"{path}: {literal} is not a finite number")
        self.path = path
        self.literal = literal


class UnsupportedVersion(ProtocolError):
    """The message's `v` is not one this build understands."""

    reason = "unsupported_version"

    def __init__(self, version: object) -> None:
        super().__init__(f"unsupported message version v={version!r}")
        self.version = version


class InvalidMessage(ProtocolError):
    """JSON that does not match the envelope: each error names the field path."""

    reason = "invalid"

    def __init__(self, model: str, errors: list[dict[str, str]]) -> None:
        detail = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        super().__init__(f"invalid {model}: {detail}")
        self.model = model
        self.errors = errors


class SignatureError(ProtocolError):
    """A signed message whose key is unknown, whose signature fails, or that has expired."""

    reason = "bad_signature"

    def __init__(self, message: str, kid: str | None = None) -> None:
        super().__init__(message)
        self.kid = kid
