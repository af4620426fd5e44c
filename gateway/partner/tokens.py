"""Bearer tokens of the partner application: shown once when created, stored as SHA-256.

A token is 256 random bits, so a plain hash is enough (nothing to brute-force) and lets a
request be checked with one indexed lookup. Tokens may also be configured
(``partner.tokens``, typically from a credential); those are hashed in memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from gateway.store import Connection

TOKEN_PREFIX = "rgp_"
TokenKind = Literal["partner", "admin"]
# Partner tokens call the partner API; admin tokens open the /console (clinic IT). Never
# interchangeable: each kind has its own table and prefix.
_KINDS: dict[TokenKind, tuple[str, str]] = {
    "partner": ("partner_tokens", TOKEN_PREFIX),
    "admin": ("admin_tokens", "rga_"),
}


@dataclass(frozen=True)
class TokenInfo:
    id: str
    label: str
    created_at: float
    revoked_at: float | None


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(conn: Connection, label: str = "", kind: TokenKind = "partner") -> tuple[TokenInfo, str]:
    """A new token: its record and the token itself, which is never stored."""
    table, prefix = _KINDS[kind]
    token = prefix + secrets.token_urlsafe(32)
    info = TokenInfo(id=secrets.token_hex(4), label=label, created_at=time.time(), revoked_at=None)
    conn.execute(
        f"INSERT INTO {table} (id, sha256, label, created_at) VALUES (?, ?, ?, ?)",
        (info.id, digest(token), label, info.created_at),
    )
    return info, token


def revoke(conn: Connection, token_id: str, kind: TokenKind = "partner") -> bool:
    table, _ = _KINDS[kind]
    cursor = conn.execute(
        f"UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
        (time.time(), token_id),
    )
    return cursor.rowcount == 1


def list_tokens(conn: Connection, kind: TokenKind = "partner") -> list[TokenInfo]:
    table, _ = _KINDS[kind]
    rows = conn.execute(
        f"SELECT id, label, created_at, revoked_at FROM {table} ORDER BY created_at"
    ).fetchall()
    return [TokenInfo(**dict(row)) for row in rows]


def is_stored(conn: Connection, token: str, kind: TokenKind = "partner") -> bool:
    """Created (not configured) and not revoked."""
    table, _ = _KINDS[kind]
    row = conn.execute(
        f"SELECT 1 FROM {table} WHERE sha256 = ? AND revoked_at IS NULL", (digest(token),)
    ).fetchone()
    return row is not None


class TokenCheck:
    """Is this bearer token one of ours: configured, or created and not revoked?"""

    def __init__(self, configured: Iterable[SecretStr]) -> None:
        self._configured = [digest(token.get_secret_value()) for token in configured]

    def is_configured(self, token: str) -> bool:
        wanted = digest(token)
        return any(hmac.compare_digest(wanted, known) for known in self._configured)

    @staticmethod
    def is_stored(conn: Connection, token: str) -> bool:
        return is_stored(conn, token, "partner")


def delete(conn: Connection, token_id: str, kind: TokenKind = "partner") -> None:
    """Remove a token's record (a short-lived one the CLI made for itself)."""
    table, _ = _KINDS[kind]
    conn.execute(f"DELETE FROM {table} WHERE id = ?", (token_id,))


def delete_labelled(conn: Connection, label: str, before: float, kind: TokenKind) -> int:
    """Remove tokens with this label created before ``before`` (a killed CLI's leftovers)."""
    table, _ = _KINDS[kind]
    cursor = conn.execute(
        f"DELETE FROM {table} WHERE label = ? AND created_at < ?", (label, before)
    )
    return cursor.rowcount
