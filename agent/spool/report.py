"""`room-agent spool verify`: the spool's state for a technician, as a table or JSON.

Verifying opens the spool like the agent does (so the scan quarantines what is torn or
corrupt); if the agent is running and holds the spool, the report comes from a read-only
scan instead, because moving a file the agent is writing would lose audio.
"""

from __future__ import annotations

import stat
import time
from contextlib import suppress
from pathlib import Path

from agent.spool.layout import CHUNK_NAME, LOCK, SESSIONS
from agent.spool.models import SpoolReport
from agent.spool.store import Spool, SpoolBusy


def spool_report(directory: Path, max_bytes: int, min_free_bytes: int) -> SpoolReport:
    if not directory.exists():
        return Spool.inspect(directory)
    try:
        with Spool(directory, max_bytes, min_free_bytes) as spool:
            return spool.report()
    except SpoolBusy:
        return Spool.inspect(directory)


def lock_file(directory: Path) -> Path:
    """The file the agent holding the spool keeps locked (its pid inside)."""
    return directory / LOCK


def oldest_chunk_age_s(directory: Path) -> float | None:
    """Chunk files stay until the gateway acknowledges them: the oldest one's age is how
    long the gateway has not taken this device's audio. Read-only, no lock needed; only
    regular files count (never a FIFO or a link an odd entry put there)."""
    times = []
    for path in (directory / SESSIONS).glob("*/*.chunk"):
        with suppress(OSError):  # acknowledged meanwhile
            info = path.lstat()
            if CHUNK_NAME.match(path.name) and stat.S_ISREG(info.st_mode):
                times.append(info.st_mtime)
    return round(time.time() - min(times), 1) if times else None


def format_report(report: SpoolReport) -> str:
    usage = report.usage
    lines = [
        f"spool {report.directory}: {usage.sessions} sessions, {usage.chunks} chunks pending, "
        f"{_size(usage.bytes)}, {usage.quarantined} quarantined"
        + (" (in use by the agent: read-only check)" if report.live else "")
    ]
    if report.sessions:
        header = f"{'SESSION':<34} {'STATE':<20} {'CHUNKS':>6} {'PENDING':>7} {'ACKED':>5} "
        lines += ["", header + f"{'LOST':>4} {'BYTES':>9} {'SPEECH_S':>9}"]
        for s in report.sessions:
            state = f"closed ({s.reason})" if s.closed else "open"
            lines.append(
                f"{s.session_id:<34} {state:<20} {s.chunks:>6} {s.pending:>7} {s.acked:>5} "
                f"{s.lost:>4} {_size(s.pending_bytes):>9} {s.speech_s:>9.1f}"
            )
    if report.findings:
        lines += ["", "this check:"]
        for f in report.findings:
            verb = f.action if f.applied else f"would be {f.action}"
            lines.append(f"  {f.path}: {verb}: {f.reason}")
    if report.quarantine:
        lines += ["", "quarantined (kept for a person to decide; never deleted by the agent):"]
        for entry in report.quarantine:
            lines.append(f"  {entry.stored}: {entry.reason} (was {entry.original})")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    if nbytes < 1024:
        return f"{nbytes} B"
    value = nbytes / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
