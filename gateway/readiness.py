"""``/readyz``: one entry per dependency the gateway needs, each judged on its own.

A load balancer reads the HTTP status; a person or a monitor reads the entries:

- ``critical`` dependencies (the database and its integrity, the job worker, the disk
  under state_dir):
  without them this replica cannot take a request safely, so any of them failing makes
  the answer 503 ``unavailable`` and the balancer sends traffic elsewhere;
- the others (the MQTT broker, Blueprint, the sealing key) failing make it ``degraded``
  with 200: the gateway still takes audio durably and queues its work, so taking every
  replica out of rotation because Blueprint is away would lose more than it saves.
  ``gateway_dependency_up{dependency}`` (in /metrics) carries the same verdicts for alerts.

Each check returns quickly: Blueprint is judged from the calls the gateway made anyway,
and probed (one ``POST /partners/authenticate``, no retries) only when nothing was heard
for ``BLUEPRINT_EVIDENCE_S``; readiness polls never hammer Blueprint. Details carry codes,
paths and numbers, never a secret.

Other parts add their checks with ``register`` (a name, whether it is critical, and an
async function of the service returning a ``DependencyCheck``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from gateway.store import StoreError, latest_version, probe_write

if TYPE_CHECKING:
    from gateway.service import GatewayService

CheckStatus = Literal["ok", "failing", "not_configured"]
OverallStatus = Literal["ok", "degraded", "unavailable"]
# Blueprint: a call (of any kind) this recent is evidence enough; else probe, at most this often.
BLUEPRINT_EVIDENCE_S = 30.0
BLUEPRINT_PROBE_TIMEOUT_S = 3.0
# Below this much free space under state_dir a sealed chunk (up to ingest.max_chunk_bytes,
# fsynced before 2xx) or an assembled session may not fit.
DISK_FLOOR_BYTES = 256 * 1024 * 1024


class DependencyCheck(BaseModel):
    status: CheckStatus
    critical: bool = False
    detail: str = Field(default="", description="what was found: codes, paths, numbers")


class Readiness(BaseModel):
    status: OverallStatus
    checks: dict[str, DependencyCheck]
    problems: list[str] = Field(default_factory=list, description="'name: detail' of failures")

    @property
    def http_status(self) -> int:
        return 503 if self.status == "unavailable" else 200


Check = Callable[["GatewayService"], Awaitable[DependencyCheck]]


@dataclass(frozen=True)
class _Entry:
    name: str
    critical: bool
    check: Check


_CHECKS: list[_Entry] = []


def register(name: str, critical: bool) -> Callable[[Check], Check]:
    """Add a dependency check (in the order shown); used as a decorator."""

    def add(check: Check) -> Check:
        _CHECKS.append(_Entry(name, critical, check))
        return check

    return add


async def readiness(service: GatewayService) -> Readiness:
    """Every check, run concurrently; a check that raises counts as failing."""
    results = await asyncio.gather(
        *(entry.check(service) for entry in _CHECKS), return_exceptions=True
    )
    checks: dict[str, DependencyCheck] = {}
    for entry, result in zip(_CHECKS, results, strict=True):
        if isinstance(result, BaseException):
            result = DependencyCheck(
                status="failing", detail=f"check failed: {type(result).__name__}"
            )
        checks[entry.name] = result.model_copy(update={"critical": entry.critical})
    failing = [name for name, check in checks.items() if check.status == "failing"]
    status: OverallStatus = "ok"
    if failing:
        status = "unavailable" if any(checks[name].critical for name in failing) else "degraded"
    problems = [f"{name}: {checks[name].detail}" for name in failing]
    return Readiness(status=status, checks=checks, problems=problems)


def ok(detail: str = "") -> DependencyCheck:
    return DependencyCheck(status="ok", detail=detail)


def failing(detail: str) -> DependencyCheck:
    return DependencyCheck(status="failing", detail=detail)


# --- the gateway's own dependencies ---------------------------------------------------------


@register("database", critical=True)
async def _database(service: GatewayService) -> DependencyCheck:
    """Takes a write (SQLite: the file; PostgreSQL: the server is reachable), and its
    schema is not newer than this code (another replica was upgraded and migrated it)."""
    try:
        version = await service.db.run(probe_write)
    except StoreError as exc:
        return failing(f"database not writable ({type(exc).__name__})")
    if version > latest_version():
        return failing(
            f"database schema v{version} is newer than this gateway's"
            f" (v{latest_version()}): upgrade this gateway"
        )
    return ok(f"{service.db.display} takes writes (schema v{version})")


@register("database_integrity", critical=True)
async def _database_integrity(service: GatewayService) -> DependencyCheck:
    """Damage found at start (SQLite's quick_check) or by a statement since: every API
    call may fail, so this replica is out of rotation until the database is restored."""
    damage = service.db.damage
    if damage is not None:
        return failing(f"{damage}: restore the database from a backup (room-gateway doctor)")
    if service.db.engine == "sqlite":
        return ok("quick_check passed at start")
    return ok("no damage reported by the server")


@register("job_worker", critical=True)
async def _job_worker(service: GatewayService) -> DependencyCheck:
    if not service.worker.alive:
        return failing("job worker not running")
    return ok("looping")


@register("disk", critical=True)
async def _disk(service: GatewayService) -> DependencyCheck:
    directory = service.settings.state_dir
    try:
        stat = await asyncio.to_thread(os.statvfs, directory)
    except OSError as exc:
        return failing(f"{directory}: {(exc.strerror or type(exc).__name__).lower()}")
    free = stat.f_bavail * stat.f_frsize
    mib = free // (1024 * 1024)
    if free < DISK_FLOOR_BYTES:
        floor = DISK_FLOOR_BYTES // (1024 * 1024)
        return failing(f"{directory}: {mib} MiB free, below {floor} MiB")
    return ok(f"{directory}: {mib} MiB free")


@register("broker", critical=False)
async def _broker(service: GatewayService) -> DependencyCheck:
    url = service.settings.mqtt.broker_url
    if service.relay is None:
        return DependencyCheck(status="not_configured", detail="mqtt.broker_url is empty")
    if not service.relay.connected:
        return failing(f"not connected to {url} (commands and notifications wait)")
    refused = service.relay.link.refused_subscriptions
    if refused:
        return failing(
            f"connected to {url}, but it refused the relay's subscriptions ({', '.join(refused)})"
        )
    return ok(f"connected to {url}")


@register("blueprint", critical=False)
async def _blueprint(service: GatewayService) -> DependencyCheck:
    return await service.blueprint_health.check()


@register("sealing_key", critical=False)
async def _sealing_key(service: GatewayService) -> DependencyCheck:
    if not service.ingest.has_key:
        return failing(
            "no usable sealing key: room devices' audio is refused (room-gateway keygen)"
        )
    return ok(service.ingest.key_fingerprint or "")


class BlueprintHealth:
    """What the gateway last heard from Blueprint, from its own calls and a rare probe."""

    def __init__(self, probe: Callable[[float], Coroutine[Any, Any, int]]) -> None:
        self._probe = probe
        self._last: tuple[float, str, int] | None = None  # (monotonic time, operation, status)
        self._probing: asyncio.Task[int] | None = None

    def saw(self, operation: str, status: int) -> None:
        """BlueprintClient's on_call: every answer (0: none) is evidence."""
        self._last = (time.monotonic(), operation, status)

    async def check(self) -> DependencyCheck:
        if self._last is None or time.monotonic() - self._last[0] > BLUEPRINT_EVIDENCE_S:
            if self._probing is None or self._probing.done():
                self._probing = asyncio.create_task(self._probe(BLUEPRINT_PROBE_TIMEOUT_S))
            try:
                status = await asyncio.shield(self._probing)
            except Exception as exc:  # the probe's own failure, not Blueprint's
                return failing(f"probe failed ({type(exc).__name__})")
            self.saw("authenticate", status)
        assert self._last is not None
        at, operation, status = self._last
        age = f"{time.monotonic() - at:.0f} s ago"
        if status == 0:
            return failing(f"unreachable ({operation}, {age})")
        if status in (401, 403):
            return failing(f"refuses the partner credentials (HTTP {status} to {operation}, {age})")
        if status >= 500 or status == 429:
            return failing(f"failing (HTTP {status} to {operation}, {age})")
        return ok(f"HTTP {status} to {operation}, {age}")
