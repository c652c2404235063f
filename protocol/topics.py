"""MQTT topic names (PROTOCOL.md, fixed) built and parsed under a configurable root."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DEVICE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
COHORT_RE = re.compile(r"^[a-z0-9][a-z0-9:_-]{0,63}$")
PROFILE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_ROOT = "edgemart/v1"

UplinkKind = Literal["batch", "claim", "state"]


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError(f"device_id {device_id!r} does not match {DEVICE_ID_RE.pattern}")
    return device_id


def check_cohort(cohort: str) -> str:
    if not COHORT_RE.fullmatch(cohort):
        raise ValueError(f"cohort {cohort!r} does not match {COHORT_RE.pattern}")
    return cohort


def check_profile(profile: str) -> str:
    if not PROFILE_RE.fullmatch(profile):
        raise ValueError(f"profile {profile!r} does not match {PROFILE_RE.pattern}")
    return profile


@dataclass(frozen=True, slots=True)
class UplinkTopic:
    """A parsed device-to-cloud topic: whose it is and what it carries."""

    device_id: str
    kind: UplinkKind


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic of the contract, under one root (`edgemart/v1` unless configured)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not self.root or any(c in self.root for c in "+#") or self.root.endswith("/"):
            raise ValueError(f"topic root {self.root!r} must be non-empty, without wildcards")

    # device -> cloud
    def batch(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/up/batch"

    def claim_up(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/up/claim"

    def state(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/state"

    def social_up(self, device_id: str) -> str:
        """`SocialRequest` (issue 19): start or join a group, start or help a cut."""
        return f"{self.root}/dev/{check_device_id(device_id)}/up/social"

    # cloud -> device
    def ack(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/down/ack"

    def offers(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/down/offers"

    def claim_down(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/down/claim"

    def social_down(self, device_id: str) -> str:
        """Signed `SocialState` (issue 19) for one member of a group or a cut."""
        return f"{self.root}/dev/{check_device_id(device_id)}/down/social"

    def cmd(self, device_id: str) -> str:
        return f"{self.root}/dev/{check_device_id(device_id)}/down/cmd"

    def device_downlink(self, device_id: str) -> str:
        """Subscription filter for everything addressed to one device."""
        return f"{self.root}/dev/{check_device_id(device_id)}/down/#"

    def cohort_offers(self, cohort: str) -> str:
        return f"{self.root}/cohort/{check_cohort(cohort)}/offers"

    def cohort_policy(self, cohort: str) -> str:
        """Retained, signed `PolicyDocument` of a cohort (issue 18)."""
        return f"{self.root}/cohort/{check_cohort(cohort)}/policy"

    def member(self, device_id: str) -> str:
        """Retained, signed `MemberStatus` of the device's member (issue 19)."""
        return f"{self.root}/dev/{check_device_id(device_id)}/down/member"

    def cohort_soldout(self, cohort: str) -> str:
        """Retained, signed `SoldOut` of a cohort's live-sale offers (issue 19)."""
        return f"{self.root}/cohort/{check_cohort(cohort)}/soldout"

    def model_manifest(self, profile: str) -> str:
        return f"{self.root}/models/{check_profile(profile)}/manifest"

    def keys(self) -> str:
        return f"{self.root}/keys"

    def timestamp(self) -> str:
        """Retained, signed freshness (`Timestamp`, issue 14)."""
        return f"{self.root}/timestamp"

    # gateway subscriptions
    def gateway_filters(self, shared_group: str | None = None) -> list[str]:
        """Filters a gateway subscribes to; with a group, as MQTT 5 shared subscriptions."""
        filters = [f"{self.root}/dev/+/up/#", f"{self.root}/dev/+/state"]
        if shared_group:
            filters = [f"$share/{shared_group}/{f}" for f in filters]
        return filters

    def parse_uplink(self, topic: str) -> UplinkTopic | None:
        """Parse a device-to-cloud topic; anything else (or a bad device id) gives None."""
        prefix = f"{self.root}/dev/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if not parts or not DEVICE_ID_RE.fullmatch(parts[0]):
            return None
        rest = parts[1:]
        if rest == ["up", "batch"]:
            return UplinkTopic(parts[0], "batch")
        if rest == ["up", "claim"]:
            return UplinkTopic(parts[0], "claim")
        if rest == ["state"]:
            return UplinkTopic(parts[0], "state")
        return None

    def parse_social(self, topic: str) -> str | None:
        """The device id of an `up/social` topic, or None for any other topic."""
        prefix = f"{self.root}/dev/"
        if not topic.startswith(prefix) or not topic.endswith("/up/social"):
            return None
        device_id = topic[len(prefix) : -len("/up/social")]
        return device_id if DEVICE_ID_RE.fullmatch(device_id) else None

    def parse_downlink(self, topic: str) -> tuple[str, str] | None:
        """Parse a cloud-to-device topic into (kind, subject): kind is ack, offers, claim,
        cmd, member, social (subject: device id), cohort_offers, cohort_policy or cohort_soldout
        (subject: cohort), manifest
        (subject: profile), keys or timestamp."""
        prefix = f"{self.root}/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) == 4 and parts[0] == "dev" and parts[2] == "down":
            if parts[3] in ("ack", "offers", "claim", "cmd", "member", "social"):
                return parts[3], parts[1]
            return None
        if len(parts) == 3 and parts[0] == "cohort" and parts[2] == "offers":
            return "cohort_offers", parts[1]
        if len(parts) == 3 and parts[0] == "cohort" and parts[2] == "policy":
            return "cohort_policy", parts[1]
        if len(parts) == 3 and parts[0] == "cohort" and parts[2] == "soldout":
            return "cohort_soldout", parts[1]
        if len(parts) == 3 and parts[0] == "models" and parts[2] == "manifest":
            return "manifest", parts[1]
        if parts == ["keys"]:
            return "keys", ""
        if parts == ["timestamp"]:
            return "timestamp", ""
        return None
