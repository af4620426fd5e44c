"""The gateway's ASGI app: the routers, the error answers, and a lifespan that opens the
store and runs the job worker for as long as the app serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gateway.api import (
    devices,
    docs,
    errors,
    health,
    people,
    room_diagnosis,
    rooms,
    sessions,
    spec,
    testing,
    webhooks,
)
from gateway.console import routes as console
from gateway.service import GatewayService
from gateway.settings import GatewaySettings
from gateway.store import StoreError, probe_write
from runtime.systemd import notify, watchdog_interval_s
from runtime.version import VERSION


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = GatewayService.open(settings)
        app.state.service = service
        service.start()
        watchdog = asyncio.create_task(_watchdog(service))
        try:
            yield
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await service.aclose()

    app = FastAPI(
        title="Room audio gateway",
        version=VERSION,
        description=spec.DESCRIPTION,
        openapi_tags=spec.TAGS,
        generate_unique_id_function=spec.operation_id,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        # One spelling per path: /chunks/0/ is not chunk 0 (a 307 would have a device
        # re-send its body elsewhere); it is a 404 like any other unknown path.
        redirect_slashes=False,
    )
    errors.install(app)
    # Body limits per router (not app-wide: Starlette's app-wide limit answers outside the
    # error handlers, in plain text).
    body_limit = settings.http.max_body_bytes
    app.include_router(people.router, max_body_size=body_limit)
    app.include_router(sessions.router, max_body_size=body_limit)
    app.include_router(rooms.router, max_body_size=body_limit)
    app.include_router(room_diagnosis.router, max_body_size=body_limit)
    app.include_router(devices.router, max_body_size=settings.ingest.max_chunk_bytes)
    if settings.testing.audio_endpoint:
        app.include_router(testing.router, max_body_size=settings.http.audio_max_bytes)
    app.include_router(webhooks.router, max_body_size=settings.http.webhook_max_body_bytes)
    app.include_router(health.router, max_body_size=body_limit)
    app.include_router(console.router, max_body_size=body_limit)
    docs.install(app)
    spec.describe(app)
    return app


async def _watchdog(service: GatewayService) -> None:
    """Ping systemd's watchdog only while the database takes writes and the worker loops."""
    interval = watchdog_interval_s()
    if interval is None:
        return
    while True:
        await asyncio.sleep(interval)
        try:
            await service.db.run(probe_write)
        except StoreError:
            continue
        if service.worker.alive:
            notify("WATCHDOG=1")
