"""How both programs trust a server they were told to trust: the system's CAs, or a file.

The file may hold a CA's certificate, or the server's own certificate, as `room-agent
enroll --pin` saves it (the certificate whose fingerprint the technician pinned: a
self-signed one, or a private CA's leaf). A certificate in the file is a trust anchor
even when it is not a CA (OpenSSL's partial-chain flag), so that pinned leaf verifies;
the host name is still checked against it.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def trusting(ca_file: Path | None) -> ssl.SSLContext:
    """A client context verifying the server against ``ca_file`` (else the system's)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if ca_file is not None:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
