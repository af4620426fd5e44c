"""The room's state as people see it, and the pattern each LED shows for it.

One word for everything the agent knows: ``recording`` and ``paused`` first (people in the
room must always know whether they are being recorded, also while the network is down),
then ``problem`` (no microphone, a full spool, the wrong key), ``notes_ready`` for a while
after the gateway said so, ``offline`` (no broker), else ``idle``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

RoomState = Literal["idle", "recording", "paused", "offline", "problem", "notes_ready"]
ROOM_STATES: tuple[RoomState, ...] = (
    "idle", "recording", "paused", "offline", "problem", "notes_ready",
)  # fmt: skip

# A single LED: steady on, off, or blinking (on, off seconds).
Pattern = tuple[float, float] | Literal["on", "off"]
PATTERNS: dict[RoomState, Pattern] = {
    "recording": "on",
    "paused": (0.5, 0.5),
    "problem": (0.1, 0.1),
    "notes_ready": (0.1, 1.9),
    "offline": (0.05, 4.95),
    "idle": "off",
}
# A colour LED (the APA102 ring): RGB.
COLOURS: dict[RoomState, tuple[int, int, int]] = {
    "recording": (255, 0, 0),
    "paused": (255, 120, 0),
    "problem": (255, 0, 255),
    "notes_ready": (0, 255, 0),
    "offline": (0, 0, 255),
    "idle": (0, 0, 0),
}


@dataclass(frozen=True)
class Facts:
    """What the state is made of."""

    recorder: str = "idle"  # the recorder's state
    paused: bool = False
    connected: bool = True
    problem: str | None = None
    notes_ready: bool = False


class FactsChange(TypedDict, total=False):
    """What may change in the Facts at once, with its type (a typo fails the type check)."""

    recorder: str
    paused: bool
    connected: bool
    problem: str | None
    notes_ready: bool


def room_state(facts: Facts) -> RoomState:
    if facts.recorder == "recording":
        return "paused" if facts.paused else "recording"
    if facts.problem:
        return "problem"
    if facts.notes_ready:
        return "notes_ready"
    if not facts.connected:
        return "offline"
    return "idle"


# The device's reasons (DeviceStatus.reason) that mean this room cannot record as it
# should: shown as ``problem``. Others (the gateway not reachable, a conflict the uplink
# sorts out) are not: the spool holds the audio, and ``offline`` says what people need.
PROBLEM_REASONS = frozenset(
    {
        "spool_full", "spool_error", "device_lost", "sealing_key_mismatch", "unauthorized",
        "device_revoked", "broker_not_authorized", "microphone_missing",
        "microphone_unavailable",
    }
)  # fmt: skip


def problem_of(reason: str | None) -> str | None:
    """The device's reason, if it is one the room should see as a problem."""
    if reason is None:
        return None
    return reason if reason in PROBLEM_REASONS or reason.startswith("microphone_") else None
