"""Why a device's request is refused, each with the HTTP status protocol/ingest.py gives it
and a stable ``code`` (listed in gateway/api/errors.py's catalogue).

Messages carry ids, seqs and codes only: they are logged, and returned to the device.
"""

from __future__ import annotations


class IngestError(Exception):
    status = 400
    code = "ingest_refused"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code


class Unauthenticated(IngestError):
    """No token, or one the gateway never issued (or has replaced)."""

    status = 401
    code = "device_unauthenticated"


class Forbidden(IngestError):
    """A known device that may not do this: revoked, or another device's path or session."""

    status = 403
    code = "device_forbidden"


class Conflict(IngestError):
    """A different chunk is stored under this seq, or the session is already assembled."""

    status = 409
    code = "chunk_conflict"


class Rejected(IngestError):
    """The chunk cannot be trusted: framing, header against the path, authentication."""

    status = 422
    code = "chunk_rejected"


class OverQuota(IngestError):
    """The device has as many unclaimed sessions here as it may; the operator frees them."""

    status = 429
    code = "unclaimed_quota"


class Unavailable(IngestError):
    """The gateway cannot take audio now (no sealing key); the device retries."""

    status = 503
    code = "ingest_unavailable"
