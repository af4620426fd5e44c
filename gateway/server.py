"""``room-gateway serve``: logging, the store checked up front, uvicorn, systemd READY.

Startup problems a person can fix (a bad database file, a database missing or empty beside
a used state directory (gateway/state_check.py), a port in use, another ``serve`` on the
same SQLite file) end as one line on stderr: the lock is taken, the store opened
(and migrated) and the port bound before uvicorn starts, so they are reported as such
rather than as an ASGI lifespan traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from typing import Any, cast

import uvicorn

from gateway.app import create_app
from gateway.listener.descriptors import take_descriptors
from gateway.listener.protocol import ConnectionGuard, Deadlines, GuardedH11Protocol
from gateway.listener.quiet_log import RepeatLimited, install_loop_handler
from gateway.sessions.audio_vault import AudioKeyError, open_vault
from gateway.settings import GatewaySettings
from gateway.state_check import missing_store_problem
from gateway.store import Database, SqliteLocation, StoreError
from gateway.store.serve_lock import ServeLock
from runtime.systemd import notify

logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# asyncio accepts up to its ``backlog`` connections per wake-up, and a connection evicted
# to make room frees its descriptor only on the next one: a small burst keeps the
# descriptors in flight well inside descriptors.RESERVED (and /healthz gets its turn),
# while the kernel's own queue of connections not yet accepted stays long.
ACCEPT_BURST = 32
KERNEL_BACKLOG = 4096


class ServeError(Exception):
    """The service could not start; the message says why."""


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, force=True)
    # httpx logs every request URL at INFO; ours carry ids only, but keep the log readable.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def serve(settings: GatewaySettings) -> None:
    configure_logging(settings.log_level)
    location = settings.store_location
    missing = missing_store_problem(settings)  # before anything could create it afresh
    if missing is not None:
        raise ServeError(missing)
    lock = ServeLock(location.path) if isinstance(location, SqliteLocation) else None
    try:
        if lock is not None:
            lock.acquire()  # held until this process ends
        db = Database.open(location)
        try:
            open_vault(db, settings.audio_key_path)  # this replica's audio key is the store's
        finally:
            db.close()
    except (StoreError, AudioKeyError) as exc:
        raise ServeError(str(exc)) from None
    listener = bind(settings.http.host, settings.http.port)
    try:
        asyncio.run(_serve(settings, listener))
    finally:
        if lock is not None:
            lock.release()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts, so "port in use" is one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return listener


async def _serve(settings: GatewaySettings, listener: socket.socket) -> None:
    limited = RepeatLimited(logging.getLogger("gateway.http"))
    install_loop_handler(asyncio.get_running_loop(), limited)
    http = settings.http
    descriptors = take_descriptors(http.max_connections)
    guard = ConnectionGuard(
        descriptors.max_connections,
        Deadlines(http.header_timeout_s, http.body_idle_timeout_s, http.body_timeout_s),
        limited,
    )
    logger.info(
        "http: connection cap %d (file descriptors: %d%s), header timeout %.0f s,"
        " body idle timeout %.0f s",
        descriptors.max_connections,
        descriptors.limit,
        f", raised from {descriptors.raised_from}" if descriptors.raised_from else "",
        http.header_timeout_s,
        http.body_idle_timeout_s,
    )
    # h11 under the deadlines and cap above (uvicorn takes a protocol factory here).
    protocol = cast(Any, functools.partial(GuardedH11Protocol, guard=guard))
    config = uvicorn.Config(
        create_app(settings),
        http=protocol,
        backlog=ACCEPT_BURST,
        log_config=None,
        log_level=settings.log_level,
        access_log=settings.http.access_log,
        lifespan="on",
        server_header=False,
        timeout_keep_alive=round(settings.http.keep_alive_s),
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    # uvicorn sets a plain attribute when it listens, no event to wait on: poll it.
    while not server.started and not serving.done():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    if server.started:
        listener.listen(KERNEL_BACKLOG)  # after asyncio's listen(ACCEPT_BURST)
        notify("READY=1")
    with contextlib.suppress(SystemExit):  # uvicorn's way of giving up during startup
        await serving
    if not server.started:
        raise ServeError("the gateway did not start (see the log above)")
