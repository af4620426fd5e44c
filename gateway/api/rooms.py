"""``/v1/rooms``: the rooms, the session each records, and its device's last report.

Online, recorder state and backlog come from the device's retained MQTT state and its
heartbeats (see gateway/relay/room_status.py); with no relay configured, or before the
device has ever connected, they are null.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from gateway import rooms
from gateway.api.deps import PARTNER_CODES, Service, require_partner
from gateway.api.errors import problems
from gateway.api.models import RoomOut, timestamp
from gateway.devices import registry
from gateway.errors import NotFound
from gateway.relay import room_status
from gateway.relay.room_status import RoomStatus
from gateway.store import Connection
from protocol.ids import ID_DESCRIPTION, ID_PATTERN

RoomIdPath = Annotated[str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION)]

router = APIRouter(prefix="/v1", dependencies=[Depends(require_partner)], tags=["rooms"])


@router.get("/rooms", response_model=list[RoomOut], responses=problems(*PARTNER_CODES))
async def list_rooms(service: Service) -> list[RoomOut]:
    """Every provisioned room: its active session, its device's status and backlog."""
    return await service.db.run(all_rooms, write=False)


@router.get(
    "/rooms/{room_id}",
    response_model=RoomOut,
    responses=problems(*PARTNER_CODES, "room_not_found"),
)
async def get_room(room_id: RoomIdPath, service: Service) -> RoomOut:
    return await service.db.run(one_room, room_id, write=False)


def all_rooms(conn: Connection) -> list[RoomOut]:
    devices = {device.id: device for device in registry.list_devices(conn)}
    status = room_status.all_rooms(conn)
    return [
        _room(room, devices[room.id], status.get(room.id))
        for room in rooms.list_rooms(conn)
        if room.id in devices
    ]


def one_room(conn: Connection, room_id: str) -> RoomOut:
    device = registry.get(conn, room_id)
    if device is None:
        raise NotFound(f"room {room_id} not found", code="room_not_found")
    found = {room.id: room for room in rooms.list_rooms(conn)}
    return _room(found[room_id], device, room_status.get(conn, room_id))


def _room(room: rooms.Room, device: registry.Device, status: RoomStatus | None) -> RoomOut:
    return RoomOut(
        room=room.id,
        name=device.name,
        active_session_id=room.active_session_id,
        device=device.status,  # type: ignore[arg-type]
        online=status.online if status else None,
        recorder=status.recorder if status else None,
        device_session_id=status.session_id if status else None,
        backlog_chunks=status.backlog_chunks if status else None,
        backlog_bytes=status.backlog_bytes if status else None,
        reason=status.reason if status else None,
        microphone=status.microphone if status else None,  # type: ignore[arg-type]
        microphone_device=status.microphone_device if status else None,
        last_seen_at=timestamp(status.last_seen_at) if status else None,
        last_heartbeat_at=(
            timestamp(status.heartbeat_at) if status and status.heartbeat_at else None
        ),
        paused=status.paused if status else None,
        do_not_record=status.do_not_record if status else None,
    )
