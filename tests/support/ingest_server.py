"""A stand-in for the gateway's HTTPS ingest: a real FastAPI app under uvicorn on a loopback
port, implementing protocol/ingest.py's semantics, with knobs for faults.

It opens each chunk with the test's private key and stores it (in memory, with the time it
arrived): an identical repeat gets 200 again, different content under a used seq 409, a
chunk it cannot open (tampered, wrong key, header not matching the URL) 422, a wrong token
401; each refusal as the gateway gives it, problem+json with its code (wrong_key for a
chunk sealed to another key). ``fail_next(n)`` answers the next n requests with a 5xx,
``answer_all(401)`` answers everything so, ``answer_all(403, proxy=True)`` as a proxy in
front of it would (an HTML page, no code), ``stop()`` refuses connections until
``start()`` (same port). ``GET .../sealing-key`` gives the key's fingerprint.

The real gateway's endpoint replaces this in the end-to-end tests; the agent's uplink is
tested against this contract meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from protocol.envelope import (
    EnvelopeError,
    OpenedChunk,
    WrongKey,
    key_fingerprint,
    open_chunk,
    public_key_to_text,
)
from protocol.ingest import (
    CHUNK_PATH,
    CLOSE_PATH,
    PROBLEM_MEDIA_TYPE,
    SEALED_CHUNK_CONTENT_TYPE,
    SEALING_KEY_PATH,
    ChunkReceipt,
    CloseReceipt,
    SealingKeyInfo,
)
from protocol.manifest import SessionManifest
from tests.support.certs import Pki
from tests.support.processes import free_port

HOST = "127.0.0.1"
# The code the real gateway gives each status it may answer (gateway/api/errors.py).
CODES = {
    400: "malformed_request",
    401: "device_unauthenticated",
    403: "device_revoked",
    409: "chunk_conflict",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: "chunk_rejected",
    500: "internal_error",
    502: "bad_gateway",
    503: "ingest_unavailable",
}
PROXY_PAGE = "<html><body><h1>403 Forbidden</h1></body></html>"


@dataclass(frozen=True)
class StoredChunk:
    sealed: bytes
    opened: OpenedChunk
    at: float

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sealed).hexdigest()


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    status: int
    at: float
    session_id: str
    seq: int | None


@dataclass
class IngestState:
    """What the server holds and how it misbehaves; guarded by ``lock``."""

    key: X25519PrivateKey
    tokens: dict[str, str]
    chunks: dict[tuple[str, str, int], StoredChunk] = field(default_factory=dict)
    manifests: dict[tuple[str, str], SessionManifest] = field(default_factory=dict)
    requests: list[Logged] = field(default_factory=list)
    fail_next: int = 0
    fail_status: int = 503
    forced_status: int | None = None
    forced_by_proxy: bool = False
    lock: threading.Condition = field(default_factory=threading.Condition)


def make_app(state: IngestState) -> FastAPI:
    app = FastAPI()

    @app.get(SEALING_KEY_PATH)
    async def sealing_key(device_id: str, request: Request) -> Response:
        with state.lock:
            refused = _refusal(state, request, device_id)
        if refused is not None:
            return refused
        public = state.key.public_key()
        info = SealingKeyInfo(
            fingerprint=key_fingerprint(public), public_key=public_key_to_text(public)
        )
        return Response(info.model_dump_json(), media_type="application/json")

    @app.put(CHUNK_PATH)
    async def put_chunk(device_id: str, session_id: str, seq: int, request: Request) -> Response:
        body = await request.body()
        with state.lock:
            status, answer = _store_chunk(state, request, device_id, session_id, seq, body)
            _log(state, "PUT", request, status, session_id, seq)
        return answer

    @app.post(CLOSE_PATH)
    async def close(device_id: str, session_id: str, request: Request) -> Response:
        body = await request.body()
        with state.lock:
            status, answer = _close(state, request, device_id, session_id, body)
            _log(state, "POST", request, status, session_id, None)
        return answer

    return app


def problem(status: int, code: str | None = None) -> Response:
    """The gateway's way of refusing: problem+json with a stable code."""
    code = code or CODES.get(status, "ingest_refused")
    body = json.dumps({"type": f"urn:room-audio:problem:{code}", "status": status, "code": code})
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


def _refusal(state: IngestState, request: Request, device_id: str) -> Response | None:
    if state.fail_next > 0:
        state.fail_next -= 1
        return problem(state.fail_status)
    if state.forced_status is not None:
        if state.forced_by_proxy:
            return Response(PROXY_PAGE, status_code=state.forced_status, media_type="text/html")
        return problem(state.forced_status)
    expected = state.tokens.get(device_id)
    if expected is None or request.headers.get("authorization") != f"Bearer {expected}":
        return problem(401)
    return None


def _store_chunk(
    state: IngestState, request: Request, device_id: str, session_id: str, seq: int, body: bytes
) -> tuple[int, Response]:
    refused = _refusal(state, request, device_id)
    if refused is not None:
        return refused.status_code, refused
    if request.headers.get("content-type") != SEALED_CHUNK_CONTENT_TYPE:
        return 415, problem(415)
    try:
        opened = open_chunk(body, state.key)
    except WrongKey:
        return 422, problem(422, "wrong_key")
    except EnvelopeError:
        return 422, problem(422)
    header = opened.header
    if (header.device_id, header.session_id, header.seq) != (device_id, session_id, seq):
        return 422, problem(422, "path_mismatch")
    key = (device_id, session_id, seq)
    sha = hashlib.sha256(body).hexdigest()
    stored = state.chunks.get(key)
    if stored is not None and stored.sha256 != sha:
        return 409, problem(409)
    if stored is None:
        state.chunks[key] = StoredChunk(body, opened, time.monotonic())
        state.lock.notify_all()
    receipt = ChunkReceipt(session_id=session_id, seq=seq, sha256=sha, duplicate=stored is not None)
    return 200, Response(receipt.model_dump_json(), media_type="application/json")


def _close(
    state: IngestState, request: Request, device_id: str, session_id: str, body: bytes
) -> tuple[int, Response]:
    refused = _refusal(state, request, device_id)
    if refused is not None:
        return refused.status_code, refused
    try:
        manifest = SessionManifest.model_validate_json(body)
    except ValidationError:
        return 422, problem(422, "invalid_request")
    if (manifest.device_id, manifest.session_id) != (device_id, session_id):
        return 422, problem(422, "path_mismatch")
    missing = [
        chunk.seq
        for chunk in manifest.chunks
        if (stored := state.chunks.get((device_id, session_id, chunk.seq))) is None
        or stored.sha256 != chunk.sha256
    ]
    state.manifests[(device_id, session_id)] = manifest
    state.lock.notify_all()
    receipt = CloseReceipt(
        session_id=session_id,
        complete=not missing,
        missing=missing,
        state="waiting_for_chunks" if missing else "assembled",
    )
    return 200, Response(receipt.model_dump_json(), media_type="application/json")


def _log(
    state: IngestState, method: str, request: Request, status: int, session_id: str, seq: int | None
) -> None:
    state.requests.append(
        Logged(method, request.url.path, status, time.monotonic(), session_id, seq)
    )
    state.lock.notify_all()


class IngestServer:
    def __init__(
        self,
        key: X25519PrivateKey,
        tokens: dict[str, str],
        port: int | None = None,
        tls: Pki | None = None,
    ) -> None:
        """``tokens``: device id -> the ingest token it must present; ``tls``: serve HTTPS
        with the PKI's server certificate (for 127.0.0.1)."""
        self.state = IngestState(key=key, tokens=dict(tokens))
        self.app = make_app(self.state)
        self.port = port or free_port()
        self.tls = tls
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.tls is not None:
            return f"https://127.0.0.1:{self.port}"
        return f"http://{HOST}:{self.port}"

    # -- lifecycle

    def start(self) -> IngestServer:
        tls: dict[str, Any] = {}
        if self.tls is not None:
            tls = {"ssl_certfile": self.tls.server_cert, "ssl_keyfile": self.tls.server_key}
        config = uvicorn.Config(
            self.app,
            host=HOST,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **tls,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="ingest", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"ingest server did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Connections are refused until start() again."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def __enter__(self) -> IngestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- faults

    def fail_next(self, count: int, status: int = 503) -> None:
        with self.state.lock:
            self.state.fail_next, self.state.fail_status = count, status

    def answer_all(self, status: int | None, proxy: bool = False) -> None:
        """Answer every request with ``status`` (e.g. 401) as the gateway would, or with
        ``proxy`` as something in front of it would (no problem code); None: behave again."""
        with self.state.lock:
            self.state.forced_status, self.state.forced_by_proxy = status, proxy

    def plant(self, device_id: str, session_id: str, seq: int, sealed: bytes) -> None:
        """Store a chunk as if it had arrived earlier (to provoke a 409)."""
        with self.state.lock:
            opened = open_chunk(sealed, self.state.key)
            self.state.chunks[(device_id, session_id, seq)] = StoredChunk(
                sealed, opened, time.monotonic()
            )

    # -- what arrived

    def chunks(self, session_id: str | None = None) -> dict[tuple[str, int], StoredChunk]:
        with self.state.lock:
            return {
                (sid, seq): chunk
                for (_, sid, seq), chunk in self.state.chunks.items()
                if session_id is None or sid == session_id
            }

    def manifest(self, session_id: str) -> SessionManifest | None:
        with self.state.lock:
            for (_, sid), manifest in self.state.manifests.items():
                if sid == session_id:
                    return manifest
        return None

    def requests(self) -> list[Logged]:
        with self.state.lock:
            return list(self.state.requests)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``condition()`` (called under the lock) holds."""
        with self.state.lock:
            if not self.state.lock.wait_for(condition, timeout):
                raise AssertionError(f"ingest server: condition not met within {timeout} s")


def main() -> None:
    """Run the stand-in as its own process (for benchmarks: not sharing the client's GIL).

    python -m tests.support.ingest_server --port P --key-file KEY.pem --token DEVICE=TOKEN
    """
    import argparse

    from protocol.envelope import private_key_from_pem

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key-file", required=True, help="the gateway's X25519 key (PEM)")
    parser.add_argument("--token", action="append", default=[], help="DEVICE=TOKEN")
    args = parser.parse_args()
    key = private_key_from_pem(Path(args.key_file).read_bytes())
    tokens = dict(item.split("=", 1) for item in args.token)
    server = IngestServer(key, tokens, port=args.port)
    uvicorn.run(server.app, host=HOST, port=server.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
