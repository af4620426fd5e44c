"""``Idempotency-Key`` on the partner API's POSTs: a retried POST gets the first answer.

A partner that lost the answer to ``POST /v1/sessions`` (a timeout, a dropped connection)
sends it again with the same key and gets the same session, not a 409 for a busy room.
The first successful answer is stored in the same transaction as the work it answers, so
a key is never recorded for work that did not happen, nor work done without its key. Keys
are per partner token, kept ``KEEP_S``; the same key with a different request is a 422
(``idempotency_key_reused``). Errors are not stored: a retry after one runs again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.api.errors import ApiError
from gateway.service import GatewayService
from gateway.store import Connection, IntegrityError

KEEP_S = 24 * 3600
REPLAYED_HEADER = "Idempotent-Replayed"

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        pattern=r"^[!-~]{1,255}$",
        description="Any unique string (a UUID) per logical request: a retry with the same"
        " key returns the first answer (header `Idempotent-Replayed: true`) instead of doing"
        " it again. Kept 24 h.",
        examples=["7f9c2ba4-e88f-4f1e-9c35-0d1e2a3b4c5d"],
    ),
]


@dataclass(frozen=True)
class _Stored:
    method: str
    path: str
    request_sha256: str
    status: int
    body: str


def request_digest(request: Request, body: BaseModel | None) -> str:
    parts = [request.method, request.url.path, body.model_dump_json() if body else ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


async def answer_once(
    service: GatewayService,
    principal: str,
    key: str | None,
    request: Request,
    body: BaseModel | None,
    work: Callable[[Connection], BaseModel],
    status: int,
) -> JSONResponse:
    """Run ``work`` in one transaction and answer it with ``status``; with a key already
    used by this partner for the same request, answer what was answered then."""
    digest = request_digest(request, body)

    def run(conn: Connection) -> tuple[int, str, bool]:
        if key is not None:
            stored = _lookup(conn, principal, key)
            if stored is not None:
                if (stored.method, stored.path, stored.request_sha256) != (
                    request.method,
                    request.url.path,
                    digest,
                ):
                    raise ApiError(
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request",
                    )
                return stored.status, stored.body, True
        answer = work(conn).model_dump_json()
        if key is not None:
            _store(conn, principal, key, request, digest, status, answer)
        return status, answer, False

    try:
        code, text, replayed = await service.db.run(run)
    except IntegrityError:
        # The same key raced in from another request (another replica): answer as it did.
        code, text, replayed = await service.db.run(run)
    headers = {REPLAYED_HEADER: "true"} if replayed else {}
    return JSONResponse(json.loads(text), status_code=code, headers=headers)


def _lookup(conn: Connection, principal: str, key: str) -> _Stored | None:
    row = conn.execute(
        "SELECT method, path, request_sha256, status, body FROM idempotency_keys"
        " WHERE principal = ? AND idempotency_key = ? AND created_at > ?",
        (principal, key, time.time() - KEEP_S),
    ).fetchone()
    return _Stored(**dict(row)) if row is not None else None


def _store(
    conn: Connection,
    principal: str,
    key: str,
    request: Request,
    digest: str,
    status: int,
    body: str,
) -> None:
    now = time.time()
    conn.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (now - KEEP_S,))
    conn.execute(
        "INSERT INTO idempotency_keys (principal, idempotency_key, method, path,"
        " request_sha256, status, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (principal, key, request.method, request.url.path, digest, status, body, now),
    )
