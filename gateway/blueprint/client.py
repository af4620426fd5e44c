"""The Blueprint partner API client: the only code that talks to Blueprint.

Every operation is safe to repeat, because the gateway's durable jobs repeat them after
crashes: records are looked up by external id before they are created and a 409 means
"already there, look it up", so nothing is created twice. Transient failures (connection
errors, 408, 429, 5xx) are retried here with exponential backoff and jitter, honouring
Retry-After; when retries run out the caller gets BlueprintUnavailable and retries later.
Any other 4xx is BlueprintRejected: repeating it cannot help.

Error messages carry operation names, ids and status codes only: never a secret, a name,
or a response body (Blueprint may echo the names it was sent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from gateway.blueprint import paths
from gateway.blueprint.environment import environment_id
from gateway.blueprint.models import (
    AccessToken,
    AuthenticateRequest,
    ClientCreate,
    ClientUpdate,
    ClinicianCreate,
    ClinicianUpdate,
    NoteOptions,
    RecordPage,
    RecordRef,
    SessionCreate,
    SessionSetting,
)
from runtime.retry import log_retry, wait_backoff

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

OnCall = Callable[[str, int], None]
"""Called after every HTTP exchange with (operation, status); status 0 = no response."""

# A token is reused until this long before Blueprint says it expires.
TOKEN_REFRESH_MARGIN_S = 60.0
# Blueprint's limit is not published; blueprint-api.md assumes 500 MB per upload.
MAX_UPLOAD_BYTES = 500 * 1024 * 1024
UPLOAD_CHUNK_BYTES = 1024 * 1024
RETRYABLE_STATUSES = frozenset({408, 429})
# How each kind of record is looked up: query parameter, and the echoed field to check.
_LOOKUPS = {
    "clinician": (paths.EXTERNAL_ID_PARAM, "external_id"),
    "client": (paths.EXTERNAL_ID_PARAM, "external_id"),
    "session": (paths.SESSION_EXTERNAL_ID_PARAM, "session_external_id"),
}


class BlueprintError(Exception):
    """A Blueprint call failed. ``status`` is the HTTP status, 0 when there was none."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BlueprintRejected(BlueprintError):
    """Blueprint refused the request (a 4xx other than 408/429), or answered something
    this client cannot use: repeating the same call will not help."""


class BlueprintUnavailable(BlueprintError):
    """Blueprint could not be reached or stayed overloaded through every retry.

    ``retry_after_s`` is Blueprint's own Retry-After, when it sent one, so the caller's
    job can be rescheduled no earlier than that.
    """

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after_s = retry_after_s


class _Transient(Exception):
    """One attempt failed in a way another attempt may not; drives the retry loop."""

    def __init__(
        self, operation: str, status: int, reason: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{operation}: {reason}")
        self.status = status
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class UploadBody:
    """An upload's body: its size in bytes, and a fresh iterator over it for each attempt."""

    size: int
    stream: Callable[[], AsyncIterator[bytes]]


class BlueprintClient:
    """Async client for the Blueprint partner API; one instance per gateway process.

    ``artifact_origins`` lists extra scheme://host[:port] origins that artifact URLs may
    point to; by default only the API's own origin is trusted with the credentials.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        client_id: str,
        client_secret: str | SecretStr,
        *,
        timeout_s: float = 30,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30,
        on_call: OnCall | None = None,
        artifact_origins: Iterable[str] = (),
    ) -> None:
        self._api_key = _secret(api_key)
        self._environment = environment_id(base_url, client_id)
        self._credentials = AuthenticateRequest(
            client_id=client_id, client_secret=_secret(client_secret)
        )
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout_s)
        self._tokens = _TokenCache(self._authenticate)
        self._max_attempts = max_attempts
        self._backoff_max_s = backoff_max_s
        self._wait = _RetryAfterOrBackoff(wait_backoff(backoff_base_s, backoff_max_s))
        self._on_call: list[OnCall] = [on_call] if on_call is not None else []
        self._artifact_origins = {_origin(httpx.URL(base_url))}
        self._artifact_origins.update(_origin(httpx.URL(url)) for url in artifact_origins)

    async def __aenter__(self) -> BlueprintClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- operations -----------------------------------------------------------------------

    async def ensure_clinician(
        self, external_id: str, first_name: str, last_name: str, email: str | None
    ) -> str:
        """The Blueprint id of the clinician with this external id, created if missing."""
        body = _build(
            ClinicianCreate,
            "ensure_clinician",
            external_id=external_id,
            first_name=first_name,
            last_name=last_name,
            email=email,
        )
        return await self._ensure("clinician", paths.CLINICIANS, external_id, body)

    async def ensure_client(
        self, external_id: str, first_name: str, last_name: str, clinician_id: str
    ) -> str:
        """The Blueprint id of the client with this external id, created if missing."""
        body = _build(
            ClientCreate,
            "ensure_client",
            external_id=external_id,
            first_name=first_name,
            last_name=last_name,
            clinician_id=clinician_id,
        )
        return await self._ensure("client", paths.CLIENTS, external_id, body)

    async def ensure_session(
        self,
        session_external_id: str,
        clinician_id: str,
        client_id: str,
        session_setting: SessionSetting = "in-person",
        note_options: dict[str, Any] | None = None,
    ) -> str:
        """The Blueprint id of the session with this external id, created if missing."""
        options = _build(NoteOptions, "ensure_session", **note_options) if note_options else None
        body = _build(
            SessionCreate,
            "ensure_session",
            session_external_id=session_external_id,
            clinician_id=clinician_id,
            client_id=client_id,
            session_setting=session_setting,
            note_options=options,
        )
        return await self._ensure("session", paths.SESSIONS, session_external_id, body)

    async def find_clinician(self, external_id: str) -> str | None:
        """The Blueprint id of the clinician with this external id, if Blueprint has one."""
        return await self._find("clinician", paths.CLINICIANS, external_id)

    async def find_client(self, external_id: str) -> str | None:
        return await self._find("client", paths.CLIENTS, external_id)

    async def find_session(self, session_external_id: str) -> str | None:
        return await self._find("session", paths.SESSIONS, session_external_id)

    async def update_clinician(
        self, clinician_id: str, first_name: str, last_name: str, email: str | None
    ) -> None:
        """Send changed details to Blueprint (a 404 means the id is unknown there)."""
        body = _build(
            ClinicianUpdate,
            "update_clinician",
            first_name=first_name,
            last_name=last_name,
            email=email,
        )
        await self._call("update_clinician", "PATCH", paths.clinician(clinician_id), body=body)

    async def update_client(
        self, client_id: str, first_name: str, last_name: str, clinician_id: str
    ) -> None:
        body = _build(
            ClientUpdate,
            "update_client",
            first_name=first_name,
            last_name=last_name,
            clinician_id=clinician_id,
        )
        await self._call("update_client", "PATCH", paths.client(client_id), body=body)

    @property
    def environment(self) -> str:
        """Which Blueprint environment this client talks to (ids are only valid there)."""
        return self._environment

    async def upload_audio(
        self, session_id: str, audio: Path | UploadBody, content_type: str
    ) -> None:
        """Stream ``audio`` (a file, or a body read part by part) to the session; it is
        never read into memory whole.

        A 409 means the session already has its audio (an earlier attempt got through
        but its answer was lost), which is the outcome the caller wanted.
        """
        if isinstance(audio, Path):
            path = audio
            audio = UploadBody(path.stat().st_size, lambda: _file_chunks(path))
        size = audio.size
        if size > MAX_UPLOAD_BYTES:
            raise BlueprintRejected(
                413, f"upload_audio: session {session_id}: {size} bytes exceeds the limit"
            )
        headers = {"Content-Type": content_type, "Content-Length": str(size)}
        try:
            await self._call(
                "upload_audio",
                "PUT",
                paths.session_audio(session_id),
                headers=headers,
                stream=audio.stream,
            )
        except BlueprintRejected as exc:
            if exc.status != 409:
                raise
            logger.info("upload_audio: session %s already has its audio (409)", session_id)

    async def get_artifact(self, url: str) -> dict[str, Any]:
        """GET an artifact URL from a webhook (progress note, transcript, ...) as JSON."""
        target = httpx.URL(url)
        if _origin(target) not in self._artifact_origins:
            raise BlueprintRejected(
                0, f"get_artifact: {target.host or 'relative URL'} is not an allowed origin"
            )
        response = await self._call("get_artifact", "GET", target)
        body = _json(response, "get_artifact")
        if not isinstance(body, dict):
            raise BlueprintRejected(response.status_code, "get_artifact: body is not an object")
        return body

    async def find_progress_note(self, session_id: str) -> dict[str, Any] | None:
        """The Blueprint session's progress note as JSON, None while it has none (404):
        what the gateway asks when the note's webhook did not come."""
        try:
            response = await self._call(
                "find_progress_note", "GET", paths.session_progress_note(session_id)
            )
        except BlueprintRejected as exc:
            if exc.status == 404:
                return None
            raise
        body = _json(response, "find_progress_note")
        if not isinstance(body, dict):
            raise BlueprintRejected(response.status_code, "find_progress_note: not an object")
        return body

    # --- ensure ---------------------------------------------------------------------------

    async def _ensure(self, kind: str, path: str, external_id: str, body: BaseModel) -> str:
        found = await self._find(kind, path, external_id)
        if found is not None:
            return found
        try:
            response = await self._call(f"create_{kind}", "POST", path, body=body)
        except BlueprintRejected as exc:
            if exc.status != 409:
                raise
            found = await self._find(kind, path, external_id)
            if found is None:
                raise BlueprintRejected(
                    409, f"create_{kind}: 409 but no {kind} has that external id"
                ) from None
            return found
        return _parse(response, RecordRef, f"create_{kind}").id

    async def _find(self, kind: str, path: str, external_id: str) -> str | None:
        operation = f"find_{kind}"
        param, field = _LOOKUPS[kind]
        response = await self._call(operation, "GET", path, params={param: external_id})
        matches = [
            item
            for item in _parse(response, RecordPage, operation).items
            if getattr(item, field) in (None, external_id)  # None: the API did not echo it
        ]
        if len(matches) > 1:
            ids = ", ".join(item.id for item in matches)
            raise BlueprintRejected(200, f"{operation}: several records match: {ids}")
        return matches[0].id if matches else None

    # --- HTTP -----------------------------------------------------------------------------

    async def _call(
        self,
        operation: str,
        method: str,
        url: str | httpx.URL,
        *,
        body: BaseModel | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        stream: Callable[[], AsyncIterator[bytes]] | None = None,
        authenticated: bool = True,
    ) -> httpx.Response:
        """One logical call: retried on transient failures, raising BlueprintError."""
        request = _Request(operation, method, url, body, params, headers or {}, stream)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts) | _RetryAfterBeyond(self._backoff_max_s),
            wait=self._wait,
            retry=retry_if_exception_type(_Transient),
            before_sleep=log_retry(logger, "blueprint"),
            reraise=True,
        )
        attempt = self._attempt if authenticated else self._send
        try:
            return await retrying(attempt, request)
        except _Transient as failure:
            attempts = retrying.statistics.get("attempt_number", 1)
            message = f"{failure}; gave up after {attempts} attempts"
            raise BlueprintUnavailable(failure.status, message, failure.retry_after_s) from None

    async def _attempt(self, request: _Request) -> httpx.Response:
        """Send with the cached token; on a 401 fetch a new token once and resend."""
        token = await self._tokens.get()
        try:
            return await self._send(request, token)
        except BlueprintRejected as exc:
            if exc.status != 401:
                raise
        self._tokens.discard(token)
        return await self._send(request, await self._tokens.get())

    async def _send(self, request: _Request, token: SecretStr | None = None) -> httpx.Response:
        headers = {"X-API-Key": self._api_key.get_secret_value(), **request.headers}
        if token is not None:
            headers["Access-Token"] = token.get_secret_value()
        try:
            response = await self._http.request(
                request.method,
                request.url,
                params=request.params,
                headers=headers,
                content=request.content(),
            )
        except httpx.TransportError as exc:
            self._report(request.operation, 0)
            raise _Transient(request.operation, 0, f"no response ({type(exc).__name__})") from None
        self._report(request.operation, response.status_code)
        return _checked(request.operation, response)

    async def probe(self, timeout_s: float) -> int:
        """One authenticate call, no retries, for readiness: its HTTP status, 0 for none.
        Proves reachability and the partner credentials; the token is not kept."""
        request = _Request(
            "authenticate", "POST", paths.AUTHENTICATE, self._credentials, None, {}, None
        )
        try:
            async with asyncio.timeout(timeout_s):
                await self._send(request)
        except (_Transient, BlueprintRejected) as exc:
            return exc.status
        except TimeoutError:
            self._report("authenticate", 0)
            return 0
        return 200

    async def _authenticate(self) -> AccessToken:
        response = await self._call(
            "authenticate", "POST", paths.AUTHENTICATE, body=self._credentials, authenticated=False
        )
        return _parse(response, AccessToken, "authenticate")

    def on_call(self, listener: OnCall) -> None:
        """Also tell ``listener`` of every exchange (metrics, readiness)."""
        self._on_call.append(listener)

    def _report(self, operation: str, status: int) -> None:
        for listener in self._on_call:
            listener(operation, status)


class _Request:
    """Everything needed to send one call again: the body is re-created per attempt."""

    def __init__(
        self,
        operation: str,
        method: str,
        url: str | httpx.URL,
        body: BaseModel | None,
        params: dict[str, str] | None,
        headers: dict[str, str],
        stream: Callable[[], AsyncIterator[bytes]] | None,
    ) -> None:
        self.operation = operation
        self.method = method
        self.url = url
        self.params = params
        self.headers = dict(headers)
        self._json = body.model_dump_json(by_alias=True).encode() if body is not None else None
        if self._json is not None:
            self.headers["Content-Type"] = "application/json"
        self._stream = stream

    def content(self) -> bytes | AsyncIterator[bytes] | None:
        return self._stream() if self._stream is not None else self._json


class _TokenCache:
    """One access token shared by all concurrent calls, fetched by one of them at a time."""

    def __init__(self, fetch: Callable[[], Awaitable[AccessToken]]) -> None:
        self._fetch = fetch
        self._token: SecretStr | None = None
        self._reuse_until = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> SecretStr:
        token = self._current()
        if token is not None:
            return token
        async with self._lock:
            token = self._current()
            if token is None:
                requested_at = time.monotonic()
                fetched = await self._fetch()
                token = fetched.access_token
                self._token = token
                self._reuse_until = requested_at + reuse_window_s(fetched.expires_in)
        return token

    def discard(self, token: SecretStr) -> None:
        """Forget ``token`` after a 401, unless another call has already replaced it."""
        if self._token is token:
            self._token = None

    def _current(self) -> SecretStr | None:
        if self._token is not None and time.monotonic() < self._reuse_until:
            return self._token
        return None


def reuse_window_s(expires_in: float) -> float:
    """How long a token is reused: until 60 s before expiry; half its life if shorter."""
    if expires_in > TOKEN_REFRESH_MARGIN_S:
        return expires_in - TOKEN_REFRESH_MARGIN_S
    return expires_in / 2


class _RetryAfterOrBackoff(wait_base):
    """Wait what Blueprint's Retry-After asks for; otherwise exponential backoff + jitter."""

    def __init__(self, backoff: Callable[[RetryCallState], float]) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(failure, _Transient) and failure.retry_after_s is not None:
            return failure.retry_after_s
        return self.backoff(retry_state)


class _RetryAfterBeyond(stop_base):
    """Stop at once when Retry-After exceeds the longest wait we would sleep in-process:
    the caller's durable job can wait that long without holding a worker."""

    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s

    def __call__(self, retry_state: RetryCallState) -> bool:
        failure = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = failure.retry_after_s if isinstance(failure, _Transient) else None
        return retry_after is not None and retry_after > self.max_wait_s


def _checked(operation: str, response: httpx.Response) -> httpx.Response:
    status = response.status_code
    if 200 <= status < 300:
        return response
    if status in RETRYABLE_STATUSES or status >= 500:
        raise _Transient(operation, status, f"HTTP {status}", _retry_after_s(response))
    raise BlueprintRejected(status, f"{operation}: Blueprint answered HTTP {status}")


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After as seconds from now; it may be a number or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _build(model: type[M], operation: str, **fields: Any) -> M:
    """Validate outgoing fields, naming bad fields without echoing their (PHI) values."""
    try:
        return model(**fields)
    except ValidationError as exc:
        names = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        raise BlueprintRejected(0, f"{operation}: invalid {', '.join(names)}") from None


def _parse(response: httpx.Response, model: type[M], operation: str) -> M:
    try:
        return model.model_validate(_json(response, operation))
    except ValidationError:
        raise BlueprintRejected(
            response.status_code, f"{operation}: unexpected response body"
        ) from None


def _json(response: httpx.Response, operation: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise BlueprintRejected(response.status_code, f"{operation}: body is not JSON") from None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default_ports = {"http": 80, "https": 443}
    return url.scheme, url.host, url.port or default_ports.get(url.scheme)


def _secret(value: str | SecretStr) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(value)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := await asyncio.to_thread(file.read, UPLOAD_CHUNK_BYTES):
            yield chunk
