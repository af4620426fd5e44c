"""Is an address one a device can use: reachable from a room, and not in clear?

Shared by the gateway (what `device add` gives devices, gateway/devices/addresses.py) and
the agent (what its config names, `room-agent config validate`), so both judge alike:

- a wildcard listening address (0.0.0.0, ::): an error, nothing connects to it;
- loopback (127.0.0.1, localhost): a warning, only this very host reaches it;
- plaintext (``http://``, ``mqtt://``) to another host: an error, because the secret that
  goes with every request (an ingest token, an MQTT password) would travel in clear,
  unless plaintext is explicitly allowed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Severity = Literal["error", "warning"]
WILDCARDS = frozenset({"0.0.0.0", "::", "*", ""})


@dataclass(frozen=True)
class AddressVerdict:
    severity: Severity
    text: str  # starts with the URL


def judge_url(
    url: str, secure_scheme: str, secret: str, allow_plaintext: bool = False
) -> AddressVerdict | None:
    """None when ``url`` is fine for a device; ``secret`` names what travels with it."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host in WILDCARDS or _is_unspecified(host):
        return AddressVerdict(
            "error",
            f"{url}: {host or 'no host'} is a wildcard listening address; devices cannot"
            " connect to it: give the host name or address they reach",
        )
    if is_loopback(host):
        return AddressVerdict(
            "warning", f"{url}: loopback: only a device on this host can reach it"
        )
    if parts.scheme != secure_scheme and not allow_plaintext:
        return AddressVerdict(
            "error",
            f"{url}: plaintext to another host: the device's {secret} would travel in"
            f" clear; use {secure_scheme}:// (or set devices.allow_plaintext on a network"
            " you trust entirely)",
        )
    return None


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False
