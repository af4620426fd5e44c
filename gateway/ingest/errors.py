"""Why a device's request is refused, each with the HTTP status protocol/ingest.py gives it.

Messages carry ids, seqs and codes only: they are logged, and returned to the device.
"""

from __future__ import annotations


class IngestError(Exception):
    status = 400


class Unauthenticated(IngestError):
    """No token, or one the gateway never issued (or has replaced)."""

    status = 401


class Forbidden(IngestError):
    """A known device that may not do this: revoked, or another device's path or session."""

    status = 403


class Conflict(IngestError):
    """A different chunk is stored under this seq, or the session is already assembled."""

    status = 409


class Rejected(IngestError):
    """The chunk cannot be trusted: framing, header against the path, authentication."""

    status = 422


class Unavailable(IngestError):
    """The gateway cannot take audio now (no sealing key); the device retries."""

    status = 503
