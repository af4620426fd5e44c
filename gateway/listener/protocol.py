"""uvicorn's h11 protocol with the deadlines and the connection cap it lacks.

h11 has no header timeout, and uvicorn only times out a connection idle *between*
requests (keep-alive; any byte cancels even that), so a client that sends half a header
and then nothing holds its descriptor for ever, and a thousand of them stop the gateway
(issue 10). Each connection here is in one of four phases:

- ``headers``: waiting for a request's headers (a new connection, or a kept-alive one
  that has sent a first byte): closed ``header_timeout_s`` after that phase began;
- ``idle``: kept alive between requests: uvicorn's keep-alive timeout applies;
- ``body``: the request's body is coming: closed if ``body_idle_timeout_s`` pass without
  a byte or ``body_timeout_s`` since the headers, but never while the gateway itself has
  paused reading (the route is slow to take the body: not the client's fault); the route
  then sees a client disconnect (one INFO line);
- ``app``: the whole request is in; the route is answering: no deadline here.

At most ``max_connections`` are open: a new one over the cap evicts the connection that
has waited longest in ``headers`` or ``idle`` (O(1): an ordered dict by when it began to
wait), or is closed itself when every connection is busy with a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from gateway.listener.quiet_log import RepeatLimited

logger = logging.getLogger("gateway.http")
Phase = Literal["headers", "idle", "body", "app"]


@dataclass(frozen=True)
class Deadlines:
    header_timeout_s: float
    body_idle_timeout_s: float
    body_timeout_s: float


class ConnectionGuard:
    """The open connections of one listener: the cap, and who is evicted first."""

    def __init__(self, max_connections: int, deadlines: Deadlines, log: RepeatLimited) -> None:
        self.max_connections = max_connections
        self.deadlines = deadlines
        self.log = log
        self._open: set[GuardedH11Protocol] = set()
        self._waiting: OrderedDict[GuardedH11Protocol, None] = OrderedDict()

    @property
    def open(self) -> int:
        return len(self._open)

    def admit(self, connection: GuardedH11Protocol) -> bool:
        """Room for a new connection, evicting the longest waiter if need be."""
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                self.log.log(
                    logging.WARNING,
                    "cap-busy",
                    "http: %d connections, all busy with requests (http.max_connections):"
                    " a new connection was closed at once",
                    len(self._open),
                )
                return False
            oldest, _ = self._waiting.popitem(last=False)
            self.forget(oldest)
            oldest.close()
            self.log.log(
                logging.WARNING,
                "cap-evicted",
                "http: %d connections open (http.max_connections): closed the one that had"
                " waited longest without sending a request (a slow or idle client)",
                self.max_connections,
            )
        self._open.add(connection)
        return True

    def waiting(self, connection: GuardedH11Protocol) -> None:
        """The connection waits for a request: the last to be evicted, for now."""
        if connection in self._open:
            self._waiting[connection] = None
            self._waiting.move_to_end(connection)

    def busy(self, connection: GuardedH11Protocol) -> None:
        self._waiting.pop(connection, None)

    def forget(self, connection: GuardedH11Protocol) -> None:
        self._open.discard(connection)
        self._waiting.pop(connection, None)


class GuardedH11Protocol(H11Protocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        guard: ConnectionGuard,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._guard = guard
        self._phase: Phase = "headers"
        self._phase_began = 0.0
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self._guard.admit(self):
            self.close()
            return
        self._enter("headers")

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        if self._phase == "idle":  # a kept-alive connection starts its next request
            self._enter("headers")
        super().data_received(data)
        self._update()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._guard.forget(self)
        super().connection_lost(exc)

    # --- phases -------------------------------------------------------------------------

    def close(self) -> None:
        """Close at once (the descriptor is what matters); a route still reading the body
        sees the client gone."""
        self._cancel_timer()
        if not self.transport.is_closing():
            self.transport.abort()

    def _update(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            if self._phase in ("body", "app"):
                # Bytes of a next request already here (pipelined) have a deadline too.
                self._enter("headers" if self.conn.trailing_data[0] else "idle")
        elif self.cycle.more_body:
            if self._phase != "body":
                self._enter("body")
        elif self._phase != "app":
            self._enter("app")

    def _enter(self, phase: Phase) -> None:
        self._phase = phase
        self._phase_began = self._last_data = self.loop.time()
        self._cancel_timer()
        if phase in ("headers", "idle"):
            self._guard.waiting(self)
        else:
            self._guard.busy(self)
        deadlines = self._guard.deadlines
        if phase == "headers":
            self._timer = self.loop.call_later(deadlines.header_timeout_s, self._check)
        elif phase == "body":
            self._timer = self.loop.call_later(deadlines.body_idle_timeout_s, self._check)

    def _check(self) -> None:
        """A deadline of the current phase may have passed (one timer per connection,
        re-armed here rather than for every read)."""
        self._timer = None
        deadlines = self._guard.deadlines
        now = self.loop.time()
        if self._phase == "headers":
            self._guard.log.log(
                logging.INFO,
                "header-timeout",
                "http: closed a connection that sent no complete request header within"
                " %.0f s (http.header_timeout_s)",
                deadlines.header_timeout_s,
            )
            self.close()
            return
        if self._phase != "body":
            return
        if self.flow.read_paused:  # the route has not taken what came: not the client
            self._last_data = now
        idle_until = self._last_data + deadlines.body_idle_timeout_s
        total_until = self._phase_began + deadlines.body_timeout_s
        if now >= idle_until or now >= total_until:
            self._guard.log.log(
                logging.INFO,
                "body-timeout",
                "http: closed a connection whose request body stopped coming (%s)",
                "http.body_idle_timeout_s" if now >= idle_until else "http.body_timeout_s",
            )
            self.close()
            return
        self._timer = self.loop.call_at(min(idle_until, total_until), self._check)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
