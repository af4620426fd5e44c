"""Rooms as the partner API and the console show them (shared; no router itself)."""

from __future__ import annotations

from gateway import rooms
from gateway.api.models import RoomOut, timestamp
from gateway.devices import registry
from gateway.errors import NotFound
from gateway.relay import room_status
from gateway.relay.room_status import RoomStatus
from gateway.store import Connection


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
        device=device.status,
        online=status.online if status else None,
        recorder=status.recorder if status else None,
        device_session_id=status.session_id if status else None,
        backlog_chunks=status.backlog_chunks if status else None,
        backlog_bytes=status.backlog_bytes if status else None,
        reason=status.reason if status else None,
        microphone=status.microphone if status else None,
        microphone_device=status.microphone_device if status else None,
        last_seen_at=timestamp(status.last_seen_at) if status else None,
        last_heartbeat_at=(
            timestamp(status.heartbeat_at) if status and status.heartbeat_at else None
        ),
        paused=status.paused if status else None,
        do_not_record=status.do_not_record if status else None,
    )
