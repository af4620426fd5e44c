"""What can go wrong with the store, in the engine's own terms translated to ours.

Code above the store catches these, never sqlite3's or psycopg's exceptions, so the same
handler works on both engines. Messages name tables, constraints and states, never values.
"""

from __future__ import annotations


class StoreError(Exception):
    """The database cannot be used, or a statement failed; phrased for a person."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway than this one."""


class DatabaseUnavailable(StoreError):
    """The database cannot be reached, or stayed busy or locked: a passing problem, so the
    HTTP answer is 503 with Retry-After and a job is tried again later."""


class IntegrityError(StoreError):
    """A constraint refused the statement; ``constraint`` names it when the engine says."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint

    def violates(self, name: str) -> bool:
        """True when ``name`` (an index or constraint) is the one that refused."""
        return self.constraint == name or name in str(self)


class DatabaseDamaged(StoreError):
    """The database's file is damaged (SQLite: SQLITE_CORRUPT or SQLITE_NOTADB): retrying
    cannot help; it is restored from a backup. /readyz reports it (database_integrity)."""
