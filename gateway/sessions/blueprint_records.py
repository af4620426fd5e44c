"""The gateway's cache of Blueprint ids, kept true to Blueprint.

Ensuring a record first looks at the cache (an id of the current Blueprint environment),
then asks Blueprint to *ensure* it (the client looks it up by external id before it
creates it) and caches the answer: a gateway killed between Blueprint's answer and our
commit repeats the lookup, never the create. A record whose details changed since
Blueprint got them is updated there (where ``blueprint.record_updates`` allows).

Cached ids can go stale: Blueprint lost its records, or ``blueprint.base_url`` moved to
another environment on the same database. :meth:`verify_clinician` and friends check a
cached id against Blueprint by external id and repair it: the id Blueprint has now, or a
record created again when it has none (looked up first, so never twice). The workflow
calls them when Blueprint refuses a step that names cached ids, then retries the step
once; ``room-gateway blueprint resync`` calls them for every record.

Per-record asyncio locks keep two jobs of this process from ensuring one record at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

from gateway.blueprint.client import BlueprintClient, BlueprintRejected
from gateway.sessions import records
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import SessionLifecycle
from gateway.sessions.states import Session
from gateway.store.database import Database

# Blueprint's answers that can mean "an id you sent is unknown here".
STALE_ID_STATUSES = frozenset({404, 410, 422})

Outcome = Literal["ok", "updated", "recreated", "not_cached", "missing"]


class RecordMissing(Exception):
    """The record is not (any more) in the gateway's store."""


@dataclass(frozen=True)
class Verified:
    """What a check of one cached id found, and did."""

    kind: str
    local_id: str
    outcome: Outcome
    blueprint_id: str | None = None

    @property
    def repaired(self) -> bool:
        return self.outcome in ("updated", "recreated")

    def describe(self) -> str:
        words = {
            "ok": "id confirmed",
            "updated": "Blueprint has it under another id; cache updated",
            "recreated": "unknown to Blueprint; created again",
            "not_cached": "not in Blueprint yet",
            "missing": "unknown to Blueprint; id forgotten (created again when needed)",
        }
        return f"{self.kind} {self.local_id}: {words[self.outcome]}"


def stale_id_answer(exc: BlueprintRejected) -> bool:
    return exc.status in STALE_ID_STATUSES


class BlueprintRecords:
    def __init__(
        self,
        db: Database,
        blueprint: BlueprintClient,
        lifecycle: SessionLifecycle,
        *,
        record_updates: bool = True,
    ) -> None:
        self._db = db
        self._blueprint = blueprint
        self._lifecycle = lifecycle
        self._record_updates = record_updates
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def environment(self) -> str:
        return self._lifecycle.environment

    @property
    def blueprint(self) -> BlueprintClient:
        return self._blueprint

    # --- ensure ---------------------------------------------------------------------------

    async def clinician_id(self, external_id: str) -> str:
        async with self._lock(f"clinician:{external_id}"):
            return await self._clinician_id(external_id)

    async def _clinician_id(self, external_id: str) -> str:
        clinician = await self._clinician(external_id)
        cached = clinician.blueprint_id_in(self.environment)
        if cached is not None and not (clinician.needs_update and self._record_updates):
            return cached
        if cached is not None:
            seen_at = time.time()
            try:
                await self._blueprint.update_clinician(
                    cached, clinician.first_name, clinician.last_name, clinician.email
                )
            except BlueprintRejected as exc:
                if exc.status != 404:
                    raise
                # Unknown there: find or create it again, with the new details.
                await self._db.run(records.forget_blueprint_id, "clinician", external_id)
                return await self._clinician_id(external_id)
            await self._db.run(records.mark_updated, "clinician", external_id, seen_at)
            return cached
        blueprint_id = await self._blueprint.ensure_clinician(
            external_id, clinician.first_name, clinician.last_name, clinician.email
        )
        await self._db.run(
            records.set_blueprint_id, "clinician", external_id, blueprint_id, self.environment
        )
        return blueprint_id

    async def client_id(self, external_id: str) -> str:
        async with self._lock(f"client:{external_id}"):
            return await self._client_id(external_id, repair=True)

    async def _client_id(self, external_id: str, *, repair: bool) -> str:
        client = await self._client(external_id)
        cached = client.blueprint_id_in(self.environment)
        if cached is not None and not (client.needs_update and self._record_updates):
            return cached
        clinician_id = await self.clinician_id(client.clinician_external_id)
        try:
            if cached is not None:
                seen_at = time.time()
                try:
                    await self._blueprint.update_client(
                        cached, client.first_name, client.last_name, clinician_id
                    )
                except BlueprintRejected as exc:
                    if exc.status != 404:
                        raise
                    await self._db.run(records.forget_blueprint_id, "client", external_id)
                    return await self._client_id(external_id, repair=repair)
                await self._db.run(records.mark_updated, "client", external_id, seen_at)
                return cached
            blueprint_id = await self._blueprint.ensure_client(
                external_id, client.first_name, client.last_name, clinician_id
            )
        except BlueprintRejected as exc:
            # The clinician's cached id may be stale: check it, and try once more.
            if not (repair and stale_id_answer(exc)):
                raise
            if not (await self.verify_clinician(client.clinician_external_id)).repaired:
                raise
            return await self._client_id(external_id, repair=False)
        await self._db.run(
            records.set_blueprint_id, "client", external_id, blueprint_id, self.environment
        )
        return blueprint_id

    async def session_id(self, session_id: str) -> str:
        """The Blueprint session of a gateway session, created if missing."""
        async with self._lock(f"session:{session_id}"):
            session = await self._session(session_id)
            cached = session.blueprint_session_id_in(self.environment)
            if cached is not None:
                return cached
            clinician_id = await self.clinician_id(session.clinician_external_id)
            client_id = await self.client_id(session.client_external_id)
            options = {"note_type": session.note_type} if session.note_type else None
            blueprint_id = await self._blueprint.ensure_session(
                session.id,
                clinician_id,
                client_id,
                session_setting=session.session_setting,  # type: ignore[arg-type]
                note_options=options,
            )
            await self._db.run(self._lifecycle.blueprint_session_created, session.id, blueprint_id)
            return blueprint_id

    # --- verify and repair --------------------------------------------------------------------

    async def verify_clinician(self, external_id: str) -> Verified:
        async with self._lock(f"clinician:{external_id}"):
            clinician = await self._clinician(external_id)
            cached = clinician.blueprint_id_in(self.environment)
            found = await self._blueprint.find_clinician(external_id)
            verified = await self._settle("clinician", external_id, cached, found)
            if verified.outcome == "missing":
                await self._db.run(records.forget_blueprint_id, "clinician", external_id)
                recreated = await self._clinician_id(external_id)
                return Verified("clinician", external_id, "recreated", recreated)
            return verified

    async def verify_client(self, external_id: str) -> Verified:
        client = await self._client(external_id)
        await self.verify_clinician(client.clinician_external_id)
        async with self._lock(f"client:{external_id}"):
            cached = client.blueprint_id_in(self.environment)
            found = await self._blueprint.find_client(external_id)
            verified = await self._settle("client", external_id, cached, found)
            if verified.outcome == "missing":
                await self._db.run(records.forget_blueprint_id, "client", external_id)
                recreated = await self._client_id(external_id, repair=False)
                return Verified("client", external_id, "recreated", recreated)
            return verified

    async def verify_session(self, session_id: str) -> Verified:
        """Check the session's cached Blueprint id; a missing one is forgotten (the next
        step that needs it creates it again, naming fresh clinician and client ids)."""
        async with self._lock(f"session:{session_id}"):
            session = await self._session(session_id)
            cached = session.blueprint_session_id_in(self.environment)
            found = await self._blueprint.find_session(session_id)
            if found is None and cached is None:
                return Verified("session", session_id, "not_cached")
            if found == cached:
                return Verified("session", session_id, "ok", found)
            await self._db.run(
                sessions.set_blueprint_session_id,
                session_id,
                found,
                self.environment if found else None,
            )
            return Verified("session", session_id, "updated" if found else "missing", found)

    async def _settle(
        self, kind: records.RecordKind, external_id: str, cached: str | None, found: str | None
    ) -> Verified:
        """Compare the cache with Blueprint's answer; cache what Blueprint has."""
        if found is not None and found == cached:
            return Verified(kind, external_id, "ok", found)
        if found is not None:
            await self._db.run(records.set_blueprint_id, kind, external_id, found, self.environment)
            return Verified(kind, external_id, "updated", found)
        if cached is None:
            return Verified(kind, external_id, "not_cached")
        return Verified(kind, external_id, "missing")

    # --- store --------------------------------------------------------------------------------

    async def _clinician(self, external_id: str) -> records.Clinician:
        clinician = await self._db.run(records.get_clinician, external_id, write=False)
        if clinician is None:
            raise RecordMissing(f"clinician {external_id} is not in the store")
        return clinician

    async def _client(self, external_id: str) -> records.Client:
        client = await self._db.run(records.get_client, external_id, write=False)
        if client is None:
            raise RecordMissing(f"client {external_id} is not in the store")
        return client

    async def _session(self, session_id: str) -> Session:
        session = await self._db.run(sessions.get, session_id, write=False)
        if session is None:
            raise RecordMissing(f"session {session_id} is not in the store")
        return session

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())
