"""Rebuilding a spool that vanished under the running agent (``rm -rf``, a card that
dropped off the bus and came back empty, a technician "freeing space").

The agent still knows, in memory, every session it holds: each chunk's record (sha256,
size, times), which are acknowledged, which are lost, the pauses, the close. So the
journals are written again from that, the way they were; what cannot come back are the
chunk files not yet acknowledged, which were deleted with the directory: each gets a
``lost`` record (left out of the manifest, its seq never used again) with the reason
below, and the loss is reported (log, device state ``spool_lost``). A session being
recorded goes on with the next seq, so the gateway never sees a seq used twice (no 409),
and what it already holds stays listed in the manifest.
"""

from __future__ import annotations

from agent.spool.journal import (
    AckRecord,
    LostRecord,
    OpenRecord,
    RecordsLostRecord,
    SessionIndex,
    _Record,
)

SPOOL_LOST = "deleted from the spool while the agent ran"


def journal_records(session: SessionIndex, present: set[int]) -> list[_Record]:
    """The journal ``session`` would have, with every pending chunk not in ``present``
    (seqs whose files still exist) recorded lost. No open record without a device id."""
    records: list[_Record] = []
    if session.device_id is not None and session.opened_at is not None:
        records.append(
            OpenRecord(
                device_id=session.device_id,
                session_id=session.session_id,
                at=session.opened_at,
            )
        )
    if session.records_lost_below is not None:
        records.append(RecordsLostRecord(below=session.records_lost_below))
    records.extend(session.chunks[seq] for seq in sorted(session.chunks))
    records.extend(AckRecord(seq=seq) for seq in sorted(session.acked))
    records.extend(LostRecord(seq=seq, reason=why) for seq, why in sorted(session.lost.items()))
    records.extend(
        LostRecord(seq=seq, reason=SPOOL_LOST)
        for seq in session.pending_seqs()
        if seq not in present
    )
    records.extend(session.paused)
    if session.closed is not None:
        records.append(session.closed)
    return records


def rebuilt(session: SessionIndex, records: list[_Record]) -> SessionIndex:
    fresh = SessionIndex(session.session_id, session.directory)
    for record in records:
        fresh.apply(record)
    return fresh
