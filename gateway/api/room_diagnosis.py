"""``/v1/rooms/{room}/ping|check|logs``: ask a room's device how it is, from a distance.

For a technician (``room-gateway room ping|check|logs`` calls these on the running
gateway) or the partner's operator: a round trip over MQTT, the device's level check
(numbers and a verdict code: no audio leaves the room) and the agent's recent log lines
(ids and codes only). The request waits for the device's answer, whichever replica the
broker hands it to (gateway/relay/diagnosis.py), and answers 504 ``room_no_answer`` when
none came in time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import BODY_CODES, PARTNER_CODES, Service, require_operator
from gateway.api.errors import ApiError, problems
from gateway.api.params import RoomIdPath
from gateway.api.room_views import one_room
from gateway.relay.diagnosis import Answer, DiagnosticCommand, NoAnswer, NotSent, RoomDiagnosis
from protocol.messages import CheckCommand, LogLine, LogsCommand, PingCommand, RoomCheck

router = APIRouter(prefix="/v1", dependencies=[Depends(require_operator)], tags=["rooms"])
CODES = (
    *PARTNER_CODES,
    "room_not_found",
    "relay_not_configured",
    "relay_unavailable",
    "room_no_answer",
)
CHECK_MARGIN_S = 10.0  # beyond the measurement itself: opening the microphone, the answer
LOGS_WAIT_S = 10.0


class RoomPingOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"room": "room-1", "round_trip_ms": 14.2}]}
    )

    room: str
    round_trip_ms: float = Field(description="the command's publish to the device's answer")


class RoomCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"seconds": 5}]})

    seconds: float = Field(default=5.0, ge=1, le=30, description="how long to listen")


DEFAULT_CHECK = RoomCheckIn()


class RoomCheckOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "room": "room-1",
                    "ok": True,
                    "refused": None,
                    "check": {
                        "seconds": 5.0,
                        "rms_dbfs": -31.2,
                        "peak_dbfs": -9.8,
                        "speech_dbfs": -27.5,
                        "noise_floor_dbfs": -58.1,
                        "snr_db": 30.6,
                        "speech_share": 0.42,
                        "clipped_share": 0.0,
                        "verdict": "good",
                    },
                }
            ]
        }
    )

    room: str
    ok: bool = Field(description="false: the device did not measure; `refused` says why")
    refused: str | None = Field(
        description="a code: recording (never disturbed), sealing_key_mismatch, microphone_..."
    )
    check: RoomCheck | None = Field(description="level, speech share, noise floor, verdict")


class RoomLogsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "room": "room-1",
                    "lines": [
                        {
                            "at": "2026-03-02T14:00:05Z",
                            "level": "INFO",
                            "logger": "agent.link.control",
                            "message": "control: connected to the broker",
                        }
                    ],
                }
            ]
        }
    )

    room: str
    lines: list[LogLine] = Field(description="the agent's own log lines, oldest first")


@router.post("/rooms/{room_id}/ping", response_model=RoomPingOut, responses=problems(*CODES))
async def ping_room(
    room_id: RoomIdPath,
    service: Service,
    timeout_s: Annotated[float, Query(gt=0, le=60)] = 5.0,
) -> RoomPingOut:
    """A round trip to the room's device over MQTT."""
    answer = await _ask(service, room_id, PingCommand(command_id=RoomDiagnosis.new_id()), timeout_s)
    return RoomPingOut(room=room_id, round_trip_ms=round(answer.round_trip_s * 1000, 1))


@router.post(
    "/rooms/{room_id}/check",
    response_model=RoomCheckOut,
    responses=problems(*CODES, *BODY_CODES),
)
async def check_room(
    room_id: RoomIdPath, service: Service, body: Annotated[RoomCheckIn, Body()] = DEFAULT_CHECK
) -> RoomCheckOut:
    """The device listens for ``seconds`` and reports numbers and a verdict (refused while
    it records: a session is never disturbed)."""
    seconds = body.seconds
    command = CheckCommand(command_id=RoomDiagnosis.new_id(), seconds=seconds)
    answer = await _ask(service, room_id, command, seconds + CHECK_MARGIN_S)
    return RoomCheckOut(
        room=room_id,
        ok=answer.ok,
        refused=None if answer.ok else answer.reason or "refused",
        check=answer.result.check,
    )


@router.get("/rooms/{room_id}/logs", response_model=RoomLogsOut, responses=problems(*CODES))
async def room_logs(
    room_id: RoomIdPath,
    service: Service,
    since_s: Annotated[float, Query(gt=0, le=7 * 86_400)] = 600.0,
    max_lines: Annotated[int, Query(ge=1, le=500)] = 200,
) -> RoomLogsOut:
    """The agent's log lines of the last ``since_s`` seconds (the newest ``max_lines``)."""
    command = LogsCommand(command_id=RoomDiagnosis.new_id(), since_s=since_s, max_lines=max_lines)
    answer = await _ask(service, room_id, command, LOGS_WAIT_S)
    return RoomLogsOut(room=room_id, lines=answer.result.logs or [])


async def _ask(service: Service, room_id: str, command: DiagnosticCommand, wait_s: float) -> Answer:
    room = await service.db.run(one_room, room_id, write=False)  # 404 room_not_found
    if service.relay is None:
        raise ApiError("relay_not_configured", "no relay: gateway.mqtt.broker_url is empty")
    try:
        return await service.relay.diagnosis.ask(room_id, command, wait_s)
    except NotSent as exc:
        raise ApiError(
            "relay_unavailable", f"the broker did not take the command ({exc})"
        ) from None
    except NoAnswer:
        seen = f", last seen {room.last_seen_at:%Y-%m-%d %H:%M:%S} UTC" if room.last_seen_at else ""
        state = "offline" if room.online is False else "online" if room.online else "never seen"
        raise ApiError(
            "room_no_answer",
            f"room {room_id} did not answer within {wait_s:g} s (its device is {state}{seen})",
        ) from None
