"""The fingerprint of the certificate devices will see at devices.gateway_url, for
`room-agent enroll --pin`: read from the URL itself, as a device would connect, so it is
the proxy's certificate when a TLS proxy is in front of the gateway. Not verified here
(a private CA or a self-signed certificate is what pinning is for); None for http:// or
when the URL cannot be reached from this host (device add says so)."""

from __future__ import annotations

import socket
import ssl
from urllib.parse import urlsplit

from protocol.enrollment import certificate_fingerprint

TIMEOUT_S = 3.0


def gateway_certificate_pin(url: str, timeout: float = TIMEOUT_S) -> tuple[str | None, str | None]:
    """(fingerprint, None) or (None, why not)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.hostname is None:
        return None, "not https: nothing to pin"
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        address = (parts.hostname, parts.port or 443)
        with (
            socket.create_connection(address, timeout) as sock,
            context.wrap_socket(sock, server_hostname=parts.hostname) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ValueError) as exc:
        return None, f"{parts.hostname}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
    if der is None:
        return None, "no certificate"
    return certificate_fingerprint(der), None
