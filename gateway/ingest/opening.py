"""A chunk's opening before it is stored: its digest, its seal, its audio decoded.

This is most of a chunk's CPU (the FLAC decode alone is about a third of it). On a thread
of the gateway it holds the interpreter lock that the event loop and the store's threads
need, so one gateway process used about one core whatever the machine had. In worker
processes (``ingest.open_workers``) it runs on the other cores, and a decoder that crashes
on hostile audio takes a worker with it, not the gateway. With 0 workers it runs on a
thread of the gateway, as before (one core, no extra processes).

Nothing here decides durability: the receiver stores the chunk, and answers the device,
after. A worker that dies mid-chunk breaks the pool; the chunks it held are opened again
in a new one, and a chunk interrupted twice gets a 503 (the device keeps it and retries):
a broken worker never turns into a refusal, since a refused chunk is set aside.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from gateway.ingest.errors import Rejected, Unavailable
from gateway.keys import SealingKeys
from gateway.stages import StageLog, Stages
from protocol.envelope import ChunkHeader, EnvelopeError, WrongKey
from runtime.codec import SAMPLE_RATE, CodecError, decode

logger = logging.getLogger(__name__)
# How far a chunk's decoded length may be from its header's duration (codec padding).
DURATION_TOLERANCE_S = 0.1
OPEN_ATTEMPTS = 2
WATCH_EVERY_S = 2.0  # without pidfd: how often a worker looks for the gateway


@dataclass(frozen=True)
class Opening:
    """What opening a chunk found: its digest, or why it is refused as (code, reason) (a
    None code: the default ``chunk_rejected``), and the stages it took (name, CPU, wall)."""

    sha256: str
    refusal: tuple[str | None, str] | None
    stages: tuple[tuple[str, float, float], ...]


def open_sealed(keys: SealingKeys, blob: bytes, seq: int, duration_s: float) -> Opening:
    """The sealed bytes' SHA-256 (what the store keys repeats by), once the seal is open
    (the current key or a retired one: chunks spooled before a rotation) and the audio is
    what assembly can use. Blocking; a worker process's or thread's whole job."""
    log = StageLog()
    with log.stage("chunk.digest"):
        sha256 = hashlib.sha256(blob).hexdigest()
    refusal = _refusal(keys, blob, seq, duration_s, log)
    return Opening(sha256, refusal, tuple(log.timed))


def _refusal(
    keys: SealingKeys, blob: bytes, seq: int, duration_s: float, log: StageLog
) -> tuple[str | None, str] | None:
    try:
        with log.stage("chunk.aead_open"):
            opened = keys.open(blob)
    except WrongKey as exc:  # the device's gateway_public_key is not this gateway's
        return "wrong_key", str(exc)
    except EnvelopeError as exc:
        return None, str(exc)
    with log.stage("chunk.audio_check"):
        problem = audio_problem(opened.audio, duration_s)
    if problem is not None:
        code, reason = problem
        return code, f"chunk {seq}: {reason}"
    return None


def audio_problem(audio: bytes, duration_s: float) -> tuple[str, str] | None:
    """Why a chunk's audio cannot join its session, as (code, reason); None if it can."""
    try:
        decoded = decode(audio)
    except CodecError as exc:
        return "undecodable_audio", str(exc)
    if decoded.sample_rate != SAMPLE_RATE:
        return "wrong_sample_rate", f"audio is {decoded.sample_rate} Hz, not {SAMPLE_RATE} Hz"
    if abs(decoded.duration_s - duration_s) > DURATION_TOLERANCE_S + 0.01 * duration_s:
        return (
            "duration_mismatch",
            f"audio lasts {decoded.duration_s:.3f} s, the header says {duration_s:.3f} s",
        )
    return None


class ChunkOpener:
    """Opens chunks on ``workers`` processes (0: on a thread of this one). The processes
    start with the first chunk, not with the gateway: most gateways in a test suite, and
    a replica that only serves the partner API, never pay for them."""

    def __init__(self, keys: SealingKeys, workers: int, stages: Stages) -> None:
        self._keys = keys
        self._workers = workers
        self._stages = stages
        self._pool: ProcessPoolExecutor | None = None
        self._starting = asyncio.Lock()
        self._closed = False

    async def open(self, blob: bytes, header: ChunkHeader) -> str:
        """The chunk's digest once its seal and audio are sound; Rejected (a 422: the
        device sets it aside) if they are not, Unavailable (a 503: it retries) if the
        opening was interrupted twice."""
        opening = await self._opening(blob, header.seq, header.duration_s)
        for name, cpu_s, wall_s in opening.stages:
            self._stages.record(name, cpu_s, wall_s)
        if opening.refusal is not None:
            code, reason = opening.refusal
            raise Rejected(reason, code=code)
        return opening.sha256

    async def _opening(self, blob: bytes, seq: int, duration_s: float) -> Opening:
        if self._workers == 0:
            return await asyncio.to_thread(open_sealed, self._keys, blob, seq, duration_s)
        for _ in range(OPEN_ATTEMPTS):
            pool = await self._running_pool()
            try:
                future = pool.submit(_open_in_worker, blob, seq, duration_s)
                return await asyncio.wrap_future(future)
            except BrokenProcessPool:
                logger.warning("an ingest worker process ended while opening chunk %d", seq)
                await self._replace(pool)
        raise Unavailable(
            f"chunk {seq}: its opening was interrupted {OPEN_ATTEMPTS} times (an ingest worker"
            " process ended); send it again",
            code="ingest_unavailable",
        )

    async def _running_pool(self) -> ProcessPoolExecutor:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._starting:
            if self._pool is None:
                if self._closed:
                    raise Unavailable("the gateway is stopping", code="ingest_unavailable")
                # Starting processes blocks (the fork server imports the codec): off the loop.
                self._pool = await asyncio.to_thread(self._started_pool)
            return self._pool

    async def _replace(self, broken: ProcessPoolExecutor) -> None:
        async with self._starting:
            if self._pool is broken:
                self._pool = None
                await asyncio.to_thread(broken.shutdown, wait=False, cancel_futures=True)

    def _started_pool(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has the codec and the crypto imported already.
        context.set_forkserver_preload([__name__])
        pool = ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(str(self._keys.path), os.getpid()),
        )
        # Each worker started now, not on the event loop at a chunk's arrival.
        for ready in [pool.submit(os.getpid) for _ in range(self._workers)]:
            ready.result()
        return pool

    def close(self) -> None:
        """Stop the workers (blocking: call it off the event loop)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


# --- in a worker process ----------------------------------------------------------------------

_worker_keys: SealingKeys | None = None


def _start_worker(key_path: str, gateway_pid: int) -> None:
    """A worker's set-up: its own view of the key files (rotations reach it as they reach
    the gateway: the files are looked at on every chunk). A Ctrl-C is the gateway's to
    handle; the worker ends when the gateway does, even one killed outright (the pool
    cannot tell it then, and the fork server waits for its workers before ending)."""
    global _worker_keys
    _worker_keys = SealingKeys(Path(key_path))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(
        target=_end_with, args=(gateway_pid,), name="gateway-watch", daemon=True
    ).start()


def _end_with(gateway_pid: int) -> None:
    """Block until the gateway's process ends, then end this one."""
    try:
        ended = os.pidfd_open(gateway_pid)
    except ProcessLookupError:
        os._exit(0)
    except OSError:  # no pidfd here (an old kernel, a seccomp filter): look now and then
        while _alive(gateway_pid):
            time.sleep(WATCH_EVERY_S)
        os._exit(0)
    select.select([ended], [], [])  # readable once the process has ended
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):  # PermissionError: another user's pid now
        return False
    return True


def _open_in_worker(blob: bytes, seq: int, duration_s: float) -> Opening:
    assert _worker_keys is not None, "worker started without _start_worker"
    return open_sealed(_worker_keys, blob, seq, duration_s)
