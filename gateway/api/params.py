"""Path and query parameters the partner API's routers share (so routers import no router)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from gateway.api.models import EXTERNAL_ID_DESCRIPTION, EXTERNAL_ID_PATTERN
from protocol.ids import ID_DESCRIPTION, ID_PATTERN

ExternalIdPath = Annotated[
    str,
    Path(
        pattern=EXTERNAL_ID_PATTERN,
        description=EXTERNAL_ID_DESCRIPTION,
        examples=["clin-1042"],
    ),
]
SessionIdPath = Annotated[
    str,
    Path(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["ses_0123456789abcdef0123"]),
]
RoomIdPath = Annotated[
    str, Path(pattern=ID_PATTERN, description=ID_DESCRIPTION, examples=["room-1"])
]
