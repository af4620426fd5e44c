"""The client: one method per operation of the partner API, typed answers, problem errors.

Every ``POST`` carries an ``Idempotency-Key`` (a fresh UUID unless one is given), and a
POST that fails on the way (no answer) is retried with the same key, so a start is never
done twice and never answers ``room_busy`` for its own first try.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from partner_client.models import (
    Artifacts,
    Problem,
    Record,
    Room,
    Session,
    SessionPage,
    SessionSummary,
)

M = TypeVar("M", bound=BaseModel)
SessionSetting = Literal["in-person", "telehealth"]
POST_TRIES = 3


class ProblemError(Exception):
    """The gateway refused the request; ``problem`` is its RFC 9457 answer."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(f"{problem.status} {problem.code}: {problem.detail}")
        self.problem = problem

    @property
    def code(self) -> str:
        return self.problem.code

    @property
    def status(self) -> int:
        return self.problem.status


class PartnerClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
        )

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- clinicians and clients -------------------------------------------------------------

    def put_clinician(
        self, external_id: str, *, first_name: str, last_name: str, email: str | None = None
    ) -> Record:
        body = {"first_name": first_name, "last_name": last_name, "email": email}
        return self._call(Record, "PUT", f"/v1/clinicians/{external_id}", json=body)

    def get_clinician(self, external_id: str) -> Record:
        return self._call(Record, "GET", f"/v1/clinicians/{external_id}")

    def delete_clinician(self, external_id: str) -> None:
        self._call(None, "DELETE", f"/v1/clinicians/{external_id}")

    def put_client(
        self, external_id: str, *, first_name: str, last_name: str, clinician_external_id: str
    ) -> Record:
        body = {
            "first_name": first_name,
            "last_name": last_name,
            "clinician_external_id": clinician_external_id,
        }
        return self._call(Record, "PUT", f"/v1/clients/{external_id}", json=body)

    def get_client(self, external_id: str) -> Record:
        return self._call(Record, "GET", f"/v1/clients/{external_id}")

    def delete_client(self, external_id: str) -> None:
        self._call(None, "DELETE", f"/v1/clients/{external_id}")

    # --- sessions ---------------------------------------------------------------------------

    def start_session(
        self,
        room: str,
        clinician_external_id: str,
        client_external_id: str,
        *,
        note_type: str | None = None,
        session_setting: SessionSetting = "in-person",
        idempotency_key: str | None = None,
    ) -> Session:
        body: dict[str, Any] = {
            "room": room,
            "clinician_external_id": clinician_external_id,
            "client_external_id": client_external_id,
            "session_setting": session_setting,
        }
        if note_type is not None:
            body["note_type"] = note_type
        return self._post(Session, "/v1/sessions", idempotency_key, json=body)

    def stop_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return self._post(Session, f"/v1/sessions/{session_id}/stop", idempotency_key)

    def cancel_session(self, session_id: str, *, idempotency_key: str | None = None) -> Session:
        return self._post(Session, f"/v1/sessions/{session_id}/cancel", idempotency_key)

    def get_session(self, session_id: str) -> Session:
        return self._call(Session, "GET", f"/v1/sessions/{session_id}")

    def list_sessions_page(
        self,
        *,
        room: str | None = None,
        states: Collection[str] = (),
        clinician_external_id: str | None = None,
        client_external_id: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> SessionPage:
        params: list[tuple[str, str]] = [("limit", str(limit))]
        for name, value in (
            ("room", room),
            ("clinician_external_id", clinician_external_id),
            ("client_external_id", client_external_id),
            ("created_after", created_after.isoformat() if created_after else None),
            ("created_before", created_before.isoformat() if created_before else None),
            ("cursor", cursor),
        ):
            if value is not None:
                params.append((name, value))
        params += [("state", state) for state in states]
        return self._call(SessionPage, "GET", "/v1/sessions", params=params)

    def list_sessions(self, **filters: Any) -> Iterator[SessionSummary]:
        """Every matching session, newest first, page after page."""
        cursor = None
        while True:
            page = self.list_sessions_page(**filters, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def artifacts(self, session_id: str) -> Artifacts:
        return self._call(Artifacts, "GET", f"/v1/sessions/{session_id}/artifacts")

    def wait_for_session(
        self, session_id: str, states: Collection[str], *, timeout_s: float = 300.0
    ) -> Session:
        """Poll until the session is in one of ``states`` (or ``failed``/``cancelled``,
        which end it); TimeoutError after ``timeout_s``. A callback saves the polling."""
        deadline = time.monotonic() + timeout_s
        while True:
            session = self.get_session(session_id)
            if session.state in states or session.state in ("failed", "cancelled"):
                return session
            if time.monotonic() > deadline:
                raise TimeoutError(f"session {session_id} is still {session.state}")
            time.sleep(0.2)

    # --- rooms ------------------------------------------------------------------------------

    def rooms(self) -> list[Room]:
        answer = self._request("GET", "/v1/rooms")
        return [Room.model_validate(item) for item in answer.json()]

    def room(self, room: str) -> Room:
        return self._call(Room, "GET", f"/v1/rooms/{room}")

    # --- HTTP -------------------------------------------------------------------------------

    def _post(self, model: type[M], path: str, key: str | None, **kwargs: Any) -> M:
        headers = {"Idempotency-Key": key or str(uuid.uuid4())}
        for attempt in range(POST_TRIES):
            try:
                return self._call(model, "POST", path, headers=headers, **kwargs)
            except httpx.TransportError:
                if attempt == POST_TRIES - 1:
                    raise
                time.sleep(0.5 * 2**attempt)  # same key: the gateway answers what it did
        raise AssertionError("unreachable")

    def _call(self, model: type[M] | None, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._request(method, path, **kwargs)
        if model is None:
            return None
        return model.model_validate(answer.json())

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self._http.request(method, path, **kwargs)
        if answer.status_code >= 400:
            raise ProblemError(_problem(answer))
        return answer


def _problem(answer: httpx.Response) -> Problem:
    try:
        return Problem.model_validate(answer.json())
    except (ValueError, ValidationError):
        return Problem(
            type="about:blank",
            title=answer.reason_phrase,
            status=answer.status_code,
            detail=answer.reason_phrase,
            code="unexpected_answer",
        )
