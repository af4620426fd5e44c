"""What can go wrong with a partner's request, independent of HTTP; the API maps each
to its status (404, 409, 422) and answers RFC 9457 problem details (gateway/api/errors.py).

Every error carries a stable snake_case ``code`` that partners can switch on (the message
is for people and may change); each code is listed, with its status and meaning, in
gateway/api/errors.py's catalogue. Messages carry ids and states only.
"""


class GatewayError(Exception):
    """A request the gateway understood but cannot carry out; the message says why."""

    code = "invalid_request"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        if code is not None:
            self.code = code


class NotFound(GatewayError):
    """The thing named in the URL does not exist."""

    code = "not_found"


class Conflict(GatewayError):
    """The request clashes with the current state (a busy room, a stopped session)."""

    code = "conflict"


class InvalidReference(GatewayError):
    """The body names something unknown (a room, a clinician, a client)."""

    code = "invalid_reference"
