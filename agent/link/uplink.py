"""The uplink: drains the spool to the gateway over HTTPS, oldest first; a chunk is deleted
from the spool only after the gateway answered 2xx for exactly its bytes.

Chunks leave as soon as they are spooled (the recorder's chunk_spooled event calls wake()),
so when a session stops only its last chunk and its manifest are left to send. After an
outage the backlog drains through ``upload_concurrency`` workers sharing one httpx.Client,
whose keep-alive connections save a handshake per chunk. Once every chunk of a closed
session is acknowledged, its manifest is POSTed and the session is forgotten by the spool.

What each answer means is protocol/ingest.py's contract:

- 2xx: the receipt must name this session, seq and sha256, then the chunk is acknowledged;
- 401/403: the token is refused: everything is kept and retried every ``backoff_max_s``;
  only the gateway's own refusal (problem+json with a device code) means "unauthorized"
  or "device_revoked"; a 401/403 from anything else (a proxy, a firewall, another server)
  is reported as ``http_401``/``http_403``, never as a revocation;
- 409 (another chunk is stored under this seq) and 413: kept in the spool and held back
  until the agent restarts, reported in the device state; never deleted;
- 422 (the gateway cannot open the chunk): quarantined by the spool (kept for a person)
  and left out of the manifest, so the rest of the session can still be assembled;
- 5xx, no answer, or anything else: retried with exponential backoff and jitter.

The latest refusal (session, seq, status and the gateway's reason code) is kept in the
status, for the device state, `status` and `doctor`, until that chunk is taken.

Retries and backoff are tenacity's. Only ids, seqs and status codes are logged; the token
is only ever in the Authorization header.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import httpx
import tenacity
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from agent.settings import LinkSettings
from agent.spool import ChunkCorrupt, PendingChunk, SessionInfo, Spool, SpoolError
from protocol.ingest import (
    DEVICE_AUTH_CODES,
    SEALED_CHUNK_CONTENT_TYPE,
    ChunkReceipt,
    CloseReceipt,
    chunk_path,
    close_path,
    problem_code,
)
from protocol.manifest import SessionManifest
from protocol.messages import ChunkRefusal, DeviceReason
from runtime.retry import backoff_s, thread_retrying
from runtime.tls import trusting
from runtime.version import VERSION

log = logging.getLogger(__name__)

# Safety net: look at the spool this often even if no wake() came (e.g. a session closed
# at start-up before the uplink was listening).
RESCAN_S = 5.0
# How long stop() waits for requests in flight before giving up on them (they are kept).
STOP_WAIT_S = 5.0
REJECTED = "rejected by the gateway (HTTP 422)"

ProblemKind = Literal["conflict", "too_large", "rejected", "corrupt", "manifest_refused", "foreign"]
Receipt = TypeVar("Receipt", ChunkReceipt, CloseReceipt)


class UplinkProblem(BaseModel):
    """A chunk (or a manifest: seq None) the gateway would not take as it is."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    seq: int | None
    kind: ProblemKind
    status: int | None = None


class UplinkStatus(BaseModel):
    """What the device state and heartbeat report about the audio path: codes and counts."""

    reason: DeviceReason | None = None
    failures: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    sessions_delivered: int = 0
    held: list[UplinkProblem] = []
    set_aside: list[UplinkProblem] = []
    refused: ChunkRefusal | None = None  # the latest 4xx, with the gateway's reason code


class _Retry(Exception):
    """Try again later; ``code`` is what the device state shows meanwhile."""

    def __init__(self, code: DeviceReason) -> None:
        super().__init__(code)
        self.code = code


class _Unauthorized(_Retry):
    pass


@dataclass(frozen=True)
class _ChunkJob:
    chunk: PendingChunk

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.chunk.session_id, self.chunk.seq)


@dataclass(frozen=True)
class _CloseJob:
    session_id: str

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.session_id, None)


_Job = _ChunkJob | _CloseJob


def make_client(settings: LinkSettings, token: SecretStr) -> httpx.Client:
    """One client for all workers (httpx.Client is thread-safe): a keep-alive connection
    per worker, the gateway's CA if given, the bearer token on every request."""
    verify: ssl.SSLContext | bool = True
    if settings.ca_file is not None:
        verify = trusting(settings.ca_file)
    size = settings.upload_concurrency
    return httpx.Client(
        base_url=settings.gateway_url,
        headers={
            "Authorization": f"Bearer {token.get_secret_value()}",
            "User-Agent": f"room-agent/{VERSION}",
        },
        timeout=settings.timeout_s,
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        verify=verify,
    )


class Uplink:
    def __init__(
        self, settings: LinkSettings, device_id: str, spool: Spool, client: httpx.Client
    ) -> None:
        self.settings = settings
        self.device_id = device_id
        self.spool = spool
        self.client = client
        # One lock, two conditions: a worker waiting for work is woken alone (one per
        # thing to do, not every worker for every chunk), and a retry's sleep is ended by
        # a stop or a new token without taking a wake-up meant for an idle worker.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._token_changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._queue: deque[PendingChunk] = deque()
        self._dirty = True
        self._clock_kept = False  # an idle worker waits with the rescan timeout
        self._closable: deque[str] = deque()
        self._busy: set[tuple[str, int | None]] = set()
        self._held: set[tuple[str, int | None]] = set()
        self._status = UplinkStatus()
        self._workers: list[threading.Thread] = []
        self._token_generation = 0
        # Told of the gateway's own refusals: its "unauthorized" (re-read the credentials)
        # and a chunk sealed to another key than its own (check the key again).
        self.on_unauthorized: list[Callable[[], object]] = []
        self.on_wrong_key: list[Callable[[], None]] = []

    # -- public API

    def start(self) -> None:
        for number in range(self.settings.upload_concurrency):
            worker = threading.Thread(target=self._work, name=f"uplink-{number}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def wake(self) -> None:
        """Something was spooled or closed: look at the spool now. Cheap; any thread.
        One idle worker reads the spool, and wakes another only if it found more to do."""
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Stop taking work; requests in flight get ``timeout`` to finish (what is not
        acknowledged stays in the spool and goes at the next start)."""
        self._stopping.set()
        with self._lock:
            self._cond.notify_all()
            self._token_changed.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self.client.close()

    def use_token(self, token: SecretStr) -> None:
        """Authenticate with ``token`` (a rotation), and try again now: a refused token's
        retries wait ``backoff_max_s``, which the new one need not."""
        self.client.headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        with self._cond:
            self._token_generation += 1
            self._dirty = True
            self._cond.notify_all()
            self._token_changed.notify_all()

    def alive(self) -> bool:
        """Every worker is still running (for the watchdog)."""
        return all(worker.is_alive() for worker in self._workers)

    def status(self) -> UplinkStatus:
        with self._cond:
            return self._status.model_copy(deep=True)

    # -- choosing work

    def _work(self) -> None:
        while (job := self._claim()) is not None:
            try:
                self._retrying()(self._attempt, job)
            except _Retry:
                pass  # stopping: the chunk stays in the spool
            except (SpoolError, OSError) as exc:  # the spool's trouble, not a bug: one line
                log.warning("uplink: the spool refused (%s); the chunk stays in the spool", exc)
                self._stopping.wait(self.settings.backoff_base_s)
                self._rescan_later()
            except Exception:
                log.exception("uplink: unexpected error; the chunk stays in the spool")
                self._stopping.wait(self.settings.backoff_max_s)
                self._rescan_later()
            finally:
                with self._cond:
                    self._busy.discard(job.key)

    def _rescan_later(self) -> None:
        """A job left in the spool is found again by this worker's next scan."""
        with self._cond:
            self._dirty = True

    def _claim(self) -> _Job | None:
        """The next job. The spool is read outside ``_cond``: the recorder's ``wake()``
        (a thread that must never block) and the other workers never wait for a scan."""
        while not self._stopping.is_set():
            with self._cond:
                job = self._known_job()
                if job is not None:
                    return self._took(job)
                rescan, self._dirty = self._dirty, False
            if rescan:
                pending, sessions = self.spool.pending(), self.spool.sessions()
                with self._cond:
                    self._queue = deque(pending)
                    job = self._known_job() or self._closable_job(sessions)
                    if job is not None:
                        return self._took(job)
            with self._cond:
                if self._dirty:
                    continue  # woken while reading the spool: read it again
                self._wait_idle()
        return None

    def _wait_idle(self) -> None:
        """Wait for a wake(). One idle worker at a time also keeps the safety net's clock
        (RESCAN_S); the others wait untimed, so an idle device reads its spool once per
        RESCAN_S, not once per worker. The keeper, woken for work, lets the clock go: the
        next worker to wait picks it up (waking another for it would cost every chunk a
        wake-up, and a busy uplink reads the spool anyway). Caller holds ``_cond``."""
        if self._clock_kept:
            self._cond.wait()
            return
        self._clock_kept = True
        try:
            if not self._cond.wait(RESCAN_S):
                self._dirty = True
        finally:
            self._clock_kept = False

    def _took(self, job: _Job) -> _Job:
        """Claim ``job``; if more is known to be waiting, an idle worker takes it in
        parallel. Caller holds ``_cond``."""
        self._busy.add(job.key)
        if self._queue or self._closable:
            self._cond.notify()
        return job

    def _known_job(self) -> _Job | None:
        """Manifests of sessions just completed first, then chunks oldest first (from the
        last scan). Caller holds ``_cond``."""
        while self._closable:
            session_id = self._closable.popleft()
            if (session_id, None) not in self._busy | self._held:
                return _CloseJob(session_id)
        while self._queue:
            chunk = self._queue.popleft()
            key = (chunk.session_id, chunk.seq)
            if key not in self._busy and key not in self._held:
                return _ChunkJob(chunk)
        return None

    def _closable_job(self, sessions: list[SessionInfo]) -> _Job | None:
        """Any other closed session whose chunks are all acknowledged. Caller holds
        ``_cond``."""
        unavailable = {session_id for session_id, _ in self._busy | self._held}
        for info in sessions:
            if info.closed and not info.pending and info.session_id not in unavailable:
                return _CloseJob(info.session_id)
        return None

    def _retrying(self) -> tenacity.Retrying:
        return thread_retrying(self._stopping, _Retry, self._wait, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        """Until the next retry, a stop, or a new token."""
        with self._token_changed:
            generation = self._token_generation
            self._token_changed.wait_for(
                lambda: self._stopping.is_set() or self._token_generation != generation,
                timeout=seconds,
            )

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """A refused token will not fix itself within seconds: retry it slowly."""
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _Unauthorized):
            return self.settings.backoff_max_s
        return backoff_s(
            state.attempt_number, self.settings.backoff_base_s, self.settings.backoff_max_s
        )

    # -- one attempt

    def _attempt(self, job: _Job) -> None:
        try:
            if isinstance(job, _ChunkJob):
                self._send_chunk(job.chunk)
            else:
                self._send_manifest(job.session_id)
        except _Retry as exc:
            self._failed(exc.code)
            raise
        self._succeeded()

    def _send_chunk(self, chunk: PendingChunk) -> None:
        try:
            blob = self.spool.read(chunk.session_id, chunk.seq)
        except ChunkCorrupt:  # quarantined by the spool, left out of the manifest
            self._problem(UplinkProblem(session_id=chunk.session_id, seq=chunk.seq, kind="corrupt"))
            self._maybe_closable(chunk.session_id)
            return
        except SpoolError:
            return  # no longer pending (acknowledged meanwhile)
        path = chunk_path(self.device_id, chunk.session_id, chunk.seq)
        response = self._request("PUT", path, blob, {"Content-Type": SEALED_CHUNK_CONTENT_TYPE})
        if not response.is_success:
            self._refused(response, chunk.session_id, chunk.seq)
            return
        receipt = _receipt(response, ChunkReceipt)
        if receipt is None or (receipt.session_id, receipt.seq, receipt.sha256) != (
            chunk.session_id,
            chunk.seq,
            chunk.sha256,
        ):
            log.warning(
                "uplink: session %s chunk %s: receipt does not match; kept",
                chunk.session_id,
                chunk.seq,
            )
            raise _Retry(DeviceReason.BAD_RECEIPT)
        self.spool.ack(chunk.session_id, chunk.seq)
        with self._cond:
            self._status.chunks_sent += 1
            self._status.bytes_sent += chunk.bytes
            self._taken(chunk.session_id, chunk.seq)
        self._maybe_closable(chunk.session_id)

    def _send_manifest(self, session_id: str) -> None:
        try:
            manifest = self.spool.manifest(session_id)
        except SpoolError:
            return  # forgotten meanwhile
        response = self._request(
            "POST",
            close_path(self.device_id, session_id),
            manifest.model_dump_json(exclude_none=True).encode(),
            {"Content-Type": "application/json"},
        )
        if not response.is_success:
            self._refused(response, session_id, None)
            return
        receipt = _receipt(response, CloseReceipt)
        if receipt is None or receipt.session_id != session_id:
            log.warning("uplink: session %s: close receipt does not match; kept", session_id)
            raise _Retry(DeviceReason.BAD_RECEIPT)
        self._delivered(manifest, receipt)

    def _delivered(self, manifest: SessionManifest, receipt: CloseReceipt) -> None:
        if receipt.missing:
            # Every chunk was acknowledged before the manifest went: nothing left to resend.
            log.warning(
                "uplink: session %s: gateway reports %d chunk(s) missing after acknowledging them",
                manifest.session_id,
                len(receipt.missing),
            )
        try:
            self.spool.forget_session(manifest.session_id)
        except SpoolError as exc:
            log.warning("uplink: session %s not forgotten: %s", manifest.session_id, exc)
            return
        with self._cond:
            self._status.sessions_delivered += 1
            self._taken(manifest.session_id, None)
        log.info(
            "uplink: session %s delivered (%d chunks, gateway: %s)",
            manifest.session_id,
            len(manifest.chunks),
            receipt.state,
        )

    def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        try:
            return self.client.request(method, path, content=body, headers=headers)
        except httpx.TransportError:
            raise _Retry(DeviceReason.GATEWAY_UNREACHABLE) from None

    def _refused(self, response: httpx.Response, session_id: str, seq: int | None) -> None:
        """Everything but 2xx, as protocol/ingest.py says; raises _Retry to try again."""
        status = response.status_code
        code = problem_code(response.headers.get("content-type"), response.content)
        what = "manifest" if seq is None else f"chunk {seq}"
        if 400 <= status < 500:
            self._note_refusal(session_id, seq, status, code)
        if status in (401, 403) and code in DEVICE_AUTH_CODES:
            if code != "device_revoked":
                for hook in self.on_unauthorized:
                    hook()
            raise _Unauthorized(
                DeviceReason.DEVICE_REVOKED
                if code == "device_revoked"
                else DeviceReason.UNAUTHORIZED
            )
        if status in (401, 403) and code != "foreign_session":
            # Not the gateway's answer: a proxy or firewall in between, or another server.
            raise _Unauthorized(DeviceReason.NOT_THE_GATEWAY)
        if status == 422 and seq is not None:
            if code == "wrong_key":
                for hook in self.on_wrong_key:
                    hook()
            self._set_aside(session_id, seq)
            return
        if status in (403, 409, 413, 422):
            kind: ProblemKind = "conflict" if status == 409 else "too_large"
            if status == 403:
                kind = "foreign"
            if seq is None:
                kind = "manifest_refused"
            log.warning("uplink: session %s %s held back; kept in the spool", session_id, what)
            with self._cond:
                self._held.add((session_id, seq))
            self._problem(UplinkProblem(session_id=session_id, seq=seq, kind=kind, status=status))
            return
        raise _Retry(DeviceReason.GATEWAY_ERROR if status >= 500 else DeviceReason.GATEWAY_REFUSED)

    # -- bookkeeping

    def _note_refusal(
        self, session_id: str, seq: int | None, status: int, code: str | None
    ) -> None:
        refusal = ChunkRefusal(
            session_id=session_id, seq=seq, status=status, code=code or f"http_{status}"
        )
        with self._cond:
            last = self._status.refused
            first = last is None or (last.status, last.code) != (refusal.status, refusal.code)
            self._status.refused = refusal
        if first:
            what = "manifest" if seq is None else f"chunk {seq}"
            log.warning(
                "uplink: session %s %s refused: HTTP %d %s%s",
                session_id,
                what,
                status,
                refusal.code,
                "" if code else " (not the gateway's answer: no problem code)",
            )

    def _taken(self, session_id: str, seq: int | None) -> None:
        """Caller holds ``_cond``: a refusal of what was now taken is over."""
        refused = self._status.refused
        if refused is not None and (refused.session_id, refused.seq) == (session_id, seq):
            self._status.refused = None

    def _set_aside(self, session_id: str, seq: int) -> None:
        try:
            self.spool.set_aside(session_id, seq, REJECTED)
        except SpoolError:
            return  # no longer pending
        self._problem(UplinkProblem(session_id=session_id, seq=seq, kind="rejected", status=422))
        self._maybe_closable(session_id)

    def _maybe_closable(self, session_id: str) -> None:
        try:
            info = self.spool.session(session_id)
        except SpoolError:
            return
        if info.closed and not info.pending:
            with self._cond:
                self._closable.append(session_id)
                self._cond.notify()

    def _problem(self, problem: UplinkProblem) -> None:
        with self._cond:
            if problem.kind in ("rejected", "corrupt"):
                self._status.set_aside.append(problem)
            else:
                self._status.held.append(problem)
            self._status.reason = _held_reason(self._status)

    def _failed(self, code: DeviceReason) -> None:
        with self._cond:
            self._status.failures += 1
            first = self._status.failures == 1
            self._status.reason = code
        if first:
            log.warning("uplink: gateway not taking audio (%s); retrying with backoff", code)

    def _succeeded(self) -> None:
        with self._cond:
            failures = self._status.failures
            self._status.failures = 0
            self._status.reason = _held_reason(self._status)
        if failures:
            log.info("uplink: gateway taking audio again after %d failed attempt(s)", failures)


HELD_REASONS: dict[ProblemKind, DeviceReason] = {
    "conflict": DeviceReason.CHUNK_CONFLICT,
    "too_large": DeviceReason.CHUNK_TOO_LARGE,
    "rejected": DeviceReason.CHUNK_REJECTED,
    "corrupt": DeviceReason.CHUNK_CORRUPT,
    "manifest_refused": DeviceReason.MANIFEST_REFUSED,
    "foreign": DeviceReason.CHUNK_FOREIGN,
}


def _held_reason(status: UplinkStatus) -> DeviceReason | None:
    """The latest problem as a state code: chunk_conflict, chunk_rejected, manifest_refused..."""
    problems = status.held or status.set_aside
    if not problems:
        return None
    return HELD_REASONS[problems[-1].kind]


def _receipt(response: httpx.Response, model: type[Receipt]) -> Receipt | None:
    try:
        return model.model_validate_json(response.content)
    except ValidationError:
        return None
