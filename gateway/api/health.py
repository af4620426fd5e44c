"""Health for process managers and load balancers, and metrics for Prometheus.

``/healthz``: the process answers. ``/readyz``: each dependency's state (database, job
worker, disk, broker, Blueprint, sealing key), 503 when a critical one fails (see
gateway/readiness.py). ``/metrics``: the Prometheus text format. None of them needs a
token or reveals an id of a person.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.api.deps import Service
from gateway.jobs import queue as jobs
from gateway.metrics import CONTENT_TYPE
from gateway.readiness import Readiness, readiness
from gateway.relay import room_status
from gateway.sessions import states as sessions

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    problems: list[str] = []


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process answers (liveness)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(service: Service) -> Response:
    """One entry per dependency; 503 only when a critical one fails (gateway/readiness.py)."""
    ready = await readiness(service)
    return JSONResponse(ready.model_dump(), status_code=ready.http_status)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(service: Service) -> Response:
    """Prometheus text format: jobs, sessions by state, each room's device, ingest,
    webhooks, Blueprint calls (room ids only, no id of a person or a session)."""
    counts = await service.db.run(jobs.counts, write=False)
    service.metrics.set_job_counts(counts)
    rooms = await service.db.run(room_status.all_rooms, write=False)
    service.metrics.set_rooms(rooms, time.time())
    service.metrics.set_session_counts(await service.db.run(sessions.counts, write=False))
    service.metrics.mqtt_connected.set(int(service.relay is not None and service.relay.connected))
    ready = await readiness(service)
    service.metrics.set_dependencies(
        {
            name: check.status == "ok"
            for name, check in ready.checks.items()
            if check.status != "not_configured"
        }
    )
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
