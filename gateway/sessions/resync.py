"""``room-gateway blueprint resync``: check cached Blueprint ids against Blueprint, repair.

For each chosen clinician and client (all by default) the id cached for the current
Blueprint environment is looked up again by external id: confirmed, replaced by the one
Blueprint has, or the record created again (looked up first, so never twice). Sessions
still to be uploaded, or failed, have their Blueprint session id checked too; a missing
one is forgotten, and the session's next step (or ``jobs retry``) creates it again.
"""

from __future__ import annotations

from gateway.sessions import records
from gateway.sessions.blueprint_records import BlueprintRecords, Verified
from gateway.store import Connection
from gateway.store.database import Database

# Sessions whose Blueprint id may still be needed (an upload to come, or a retry).
OPEN_STATES = ("recording", "stopping", "audio_ready", "uploading", "failed")


async def resync(
    db: Database,
    blueprint: BlueprintRecords,
    *,
    clinicians: list[str] | None = None,
    clients: list[str] | None = None,
) -> list[Verified]:
    """Check the given records (None: every one of that kind, and every open session)."""
    everything = clinicians is None and clients is None
    if clinicians is None:
        clinicians = (
            await db.run(records.external_ids, "clinician", write=False) if everything else []
        )
    if clients is None:
        clients = await db.run(records.external_ids, "client", write=False) if everything else []
    found = [await blueprint.verify_clinician(external_id) for external_id in clinicians]
    found += [await blueprint.verify_client(external_id) for external_id in clients]
    if everything:
        for session_id in await db.run(_open_sessions, write=False):
            found.append(await blueprint.verify_session(session_id))
    return found


def _open_sessions(conn: Connection) -> list[str]:
    placeholders = ", ".join("?" for _ in OPEN_STATES)
    rows = conn.execute(
        f"SELECT id FROM sessions WHERE state IN ({placeholders})"
        " AND blueprint_session_id IS NOT NULL ORDER BY created_at",
        OPEN_STATES,
    ).fetchall()
    return [row["id"] for row in rows]
