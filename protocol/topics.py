"""MQTT topic names. The device id is the MQTT user name, so the broker's ACL
(gateway/devices/broker_files.py) confines each device to its own four topics."""

from __future__ import annotations

from typing import Literal

ROOT = "rooms"
TopicKind = Literal["state", "events", "cmd", "notify"]
KINDS: tuple[TopicKind, ...] = ("state", "events", "cmd", "notify")
SHARE_GROUP = "gateway"


def topic(device_id: str, kind: TopicKind) -> str:
    return f"{ROOT}/{device_id}/{kind}"


def all_devices(kind: TopicKind, shared: bool = False) -> str:
    """Subscription for one kind across rooms; shared spreads rooms over gateway replicas."""
    pattern = f"{ROOT}/+/{kind}"
    return f"$share/{SHARE_GROUP}/{pattern}" if shared else pattern


def parse(name: str) -> tuple[str, TopicKind] | None:
    """``rooms/<device>/<kind>`` -> (device, kind); anything else -> None."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != ROOT or parts[2] not in KINDS or not parts[1]:
        return None
    return parts[1], parts[2]
