"""What can go wrong with a partner's request, independent of HTTP; the API maps each
to its status (404, 409, 422). Messages carry ids and states only."""


class GatewayError(Exception):
    """A request the gateway understood but cannot carry out; the message says why."""


class NotFound(GatewayError):
    """The thing named in the URL does not exist."""


class Conflict(GatewayError):
    """The request clashes with the current state (a busy room, a stopped session)."""


class InvalidReference(GatewayError):
    """The body names something unknown (a room, a clinician, a client)."""
