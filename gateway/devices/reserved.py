"""Names no device may have: the gateway's own MQTT identities.

A device's id is its MQTT user name and (the broker forces it) its client id, so a device
called ``gateway`` would share the gateway's broker entry and ``rooms/#`` ACL, and one called
like a gateway replica would knock that replica off the broker. The gateway's identities are
``gateway`` and ``gateway-<replica>`` (and ``room-gateway``, the client id of earlier
releases), plus whatever user name and client id its settings
name; they are compared without regard to case (a technician reading ``Gateway`` in a list
must not mistake it for the gateway).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

GATEWAY_IDENTITY = re.compile(r"^(room-)?gateway(-.*)?$", re.IGNORECASE)


def is_reserved(device_id: str, gateway_names: Iterable[str] = ()) -> bool:
    """Whether ``device_id`` is, or could be taken for, one of the gateway's identities."""
    if GATEWAY_IDENTITY.fullmatch(device_id):
        return True
    return device_id.casefold() in {name.casefold() for name in gateway_names}
