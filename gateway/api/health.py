"""Health for process managers and load balancers, and metrics for Prometheus.

``/healthz``: the process answers. ``/readyz``: it can do its work (the database takes a
write, the job worker is looping); 503 with the reasons otherwise. ``/metrics``: the
Prometheus text format. None of them needs a token or reveals an id.
"""

from __future__ import annotations

import sqlite3

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.api.deps import Service
from gateway.jobs import queue as jobs
from gateway.metrics import CONTENT_TYPE
from gateway.store.database import probe_write

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    problems: list[str] = []


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(service: Service) -> Response:
    problems = []
    try:
        await service.db.run(probe_write)
    except sqlite3.Error as exc:
        problems.append(f"database not writable ({type(exc).__name__})")
    if not service.worker.alive:
        problems.append("job worker not running")
    health = Health(status="unavailable" if problems else "ok", problems=problems)
    return JSONResponse(health.model_dump(), status_code=503 if problems else 200)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
async def metrics(service: Service) -> Response:
    counts = await service.db.run(jobs.counts, write=False)
    service.metrics.set_job_counts(counts)
    service.metrics.mqtt_connected.set(int(service.relay is not None and service.relay.connected))
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
