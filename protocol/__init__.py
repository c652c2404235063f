"""The wire contract of devices and cloud: topics, envelopes, codec, signing. Pure, no I/O."""

from protocol.errors import (
    InvalidMessage,
    MalformedPayload,
    PayloadTooLarge,
    ProtocolError,
    SignatureError,
    UnsupportedVersion,
)

PROTOCOL_VERSION = 1

__all__ = [
    "PROTOCOL_VERSION",
    "InvalidMessage",
    "MalformedPayload",
    "PayloadTooLarge",
    "ProtocolError",
    "SignatureError",
    "UnsupportedVersion",
]
