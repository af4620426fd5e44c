"""Is the store the one this state directory has used? Never a silent empty start.

A gateway's database that is deleted or truncated to zero bytes (a failing disk, a bad
restore, a mistaken ``rm``) would otherwise be created afresh: every device token, partner
token and session gone, every device and partner answered 401, and nothing saying why. The
same for a PostgreSQL ``store.url`` that names an empty database. So before the store is
opened, ``serve`` and the admin commands look for evidence that this state directory has
run a gateway (files only a gateway with a database writes: the audio key made at the first
start, device bundles, chunk files, a SQLite WAL; not the broker password, which may be
put there by hand) and, with the store
missing or empty beside it, refuse with one line naming the evidence and the fix.

A fresh install (a sealing key from ``keygen`` at most) has no such evidence and starts.
"""

from __future__ import annotations

from pathlib import Path

from gateway.settings import GatewaySettings
from gateway.store import Database, SqliteLocation, StoreError
from gateway.store.database import stored_version


def evidence(settings: GatewaySettings) -> list[str]:
    """What shows that a gateway with a database has used this state directory."""
    found: list[str] = []
    if settings.audio_key_path.is_file():  # made by the first start, beside its database
        found.append(str(settings.audio_key_path))
    for directory, what in (
        (settings.state_dir / "devices", "device bundles"),
        (settings.chunk_dir, "chunk files"),
        (settings.audio_dir, "audio files"),
    ):
        count = _entries(directory)
        if count:
            found.append(f"{directory} ({count} {what})")
    location = settings.store_location
    if isinstance(location, SqliteLocation):
        wal = location.path.with_name(location.path.name + "-wal")
        if wal.is_file() and wal.stat().st_size > 0:
            found.append(str(wal))
    return found


def missing_store_problem(settings: GatewaySettings) -> str | None:
    """One line if the store is missing or empty while the state directory shows use;
    None otherwise (a store that cannot be reached is reported when it is opened)."""
    location = settings.store_location
    if isinstance(location, SqliteLocation):
        path = location.path
        if path.is_file() and path.stat().st_size > 0:
            return None
        what = f"{path} is empty (0 bytes)" if path.exists() else f"{path} is missing"
    else:
        try:
            db = Database.open(location, migrate=False)
        except StoreError:
            return None
        try:
            version = db.call(stored_version, write=False)
        except StoreError:
            return None
        finally:
            db.close()
        if version > 0:
            return None
        what = f"{location.display} has no gateway schema (an empty database)"
    used = evidence(settings)
    if not used:
        return None
    return (
        f"{what}, but this state directory has run a gateway ({', '.join(used[:4])}):"
        " restore the database from its backup (or fix the path or store.url); to start"
        " afresh on purpose, move the state directory aside first"
    )


def _entries(directory: Path) -> int:
    try:
        return sum(1 for _ in directory.iterdir())
    except OSError:
        return 0
