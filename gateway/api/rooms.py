"""``/v1/rooms``: the rooms, the session each records, and its device's last report.

Online, recorder state and backlog come from the device's retained MQTT state and its
heartbeats (see gateway/relay/room_status.py); with no relay configured, or before the
device has ever connected, they are null.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from gateway.api.deps import PARTNER_CODES, Service, require_partner
from gateway.api.errors import problems
from gateway.api.models import RoomOut
from gateway.api.params import RoomIdPath
from gateway.api.room_views import all_rooms, one_room

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
    """One room: its active session, its device's status and backlog."""
    return await service.db.run(one_room, room_id, write=False)
