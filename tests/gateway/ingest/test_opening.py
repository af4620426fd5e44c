"""Chunks opened in worker processes (gateway/ingest/opening.py): real processes, real
seals, the real codec. What a worker finds comes back as the gateway would have found it
on its own threads; a worker that dies is replaced without a chunk being refused; the
workers never outlive the gateway, even one killed outright."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.pipeline.seal import ChunkSealer
from gateway.ingest.errors import Rejected
from gateway.ingest.opening import ChunkOpener
from gateway.keys import SealingKeys, create_key
from gateway.stages import Stages
from protocol.envelope import ChunkHeader, generate_private_key, read_header
from tests.gateway.deployment import tone
from tests.support.eventually import eventually

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[3]


def sealed(key_path: Path, seq: int = 0, seconds: float = 1.0) -> tuple[bytes, ChunkHeader]:
    public = SealingKeys(key_path).current()
    assert public is not None
    blob = ChunkSealer("room-1", public.public_key()).seal("s-1", seq, 0.0, tone(seconds))
    return blob, read_header(blob)


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    path = tmp_path / "sealing-key.pem"
    create_key(path)
    return path


def worker_pids(opener: ChunkOpener) -> list[int]:
    pool = opener._pool  # the pool's processes: what a test can kill
    assert pool is not None and pool._processes is not None
    return list(pool._processes)


def test_a_chunk_opens_in_a_worker_process_with_its_stages_counted(key_path: Path) -> None:
    stages = Stages(CollectorRegistry())
    opener = ChunkOpener(SealingKeys(key_path), 1, stages)
    blob, header = sealed(key_path)
    try:
        assert asyncio.run(opener.open(blob, header)) == hashlib.sha256(blob).hexdigest()
        (pid,) = worker_pids(opener)
        assert pid != os.getpid()
    finally:
        opener.close()
    (family,) = stages._count.collect()
    counted = {sample.labels["stage"] for sample in family.samples}
    assert {"chunk.digest", "chunk.aead_open", "chunk.audio_check"} <= counted


def test_refusals_come_back_from_the_worker_with_their_codes(key_path: Path) -> None:
    opener = ChunkOpener(SealingKeys(key_path), 1, Stages(CollectorRegistry()))
    other = ChunkSealer("room-1", generate_private_key().public_key())
    wrong_key = other.seal("s-1", 0, 0.0, tone(1.0))
    blob, _ = sealed(key_path)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])

    async def refusals() -> list[str]:
        codes = []
        for chunk in (wrong_key, tampered):
            with pytest.raises(Rejected) as refused:
                await opener.open(chunk, read_header(chunk))
            codes.append(refused.value.code)
        return codes

    try:
        assert asyncio.run(refusals()) == ["wrong_key", "chunk_rejected"]
    finally:
        opener.close()


def test_a_worker_killed_between_chunks_is_replaced_and_the_next_chunk_opens(
    key_path: Path,
) -> None:
    opener = ChunkOpener(SealingKeys(key_path), 1, Stages(CollectorRegistry()))
    blob, header = sealed(key_path)

    async def killed_between() -> tuple[str, int, int]:
        await opener.open(blob, header)
        (first,) = worker_pids(opener)
        os.kill(first, signal.SIGKILL)
        eventually(lambda: _gone(first))
        digest = await opener.open(blob, header)
        (second,) = worker_pids(opener)
        return digest, first, second

    try:
        digest, first, second = asyncio.run(killed_between())
    finally:
        opener.close()
    assert digest == hashlib.sha256(blob).hexdigest()
    assert second != first


def test_a_worker_killed_while_it_opens_a_chunk_opens_it_again_elsewhere(
    key_path: Path,
) -> None:
    """A long chunk (60 s of audio to decode) is in a worker when the worker is killed:
    the same chunk is opened in a new worker, and its caller never hears of it."""
    opener = ChunkOpener(SealingKeys(key_path), 1, Stages(CollectorRegistry()))
    small, small_header = sealed(key_path)
    blob, header = sealed(key_path, seconds=60.0)

    async def killed_during() -> str:
        await opener.open(small, small_header)  # the worker is up
        (pid,) = worker_pids(opener)
        opening = asyncio.ensure_future(opener.open(blob, header))
        await asyncio.sleep(0)  # submitted
        os.kill(pid, signal.SIGKILL)
        return await opening

    try:
        assert asyncio.run(killed_during()) == hashlib.sha256(blob).hexdigest()
    finally:
        opener.close()


CHILD = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from prometheus_client import CollectorRegistry
from gateway.ingest.opening import ChunkOpener
from gateway.keys import SealingKeys
from gateway.stages import Stages
from protocol.envelope import read_header
blob = Path(sys.argv[3]).read_bytes()
opener = ChunkOpener(SealingKeys(Path(sys.argv[1])), 2, Stages(CollectorRegistry()))
asyncio.run(opener.open(blob, read_header(blob)))
print(*opener._pool._processes, flush=True)
sys.stdin.read()  # until killed
"""


def test_the_workers_end_with_a_gateway_killed_outright(key_path: Path, tmp_path: Path) -> None:
    blob, _ = sealed(key_path)
    (tmp_path / "chunk").write_bytes(blob)
    argv = [sys.executable, "-c", CHILD, str(key_path), str(REPO), str(tmp_path / "chunk")]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        workers = [int(pid) for pid in child.stdout.readline().split()]
        assert len(workers) == 2 and all(Path(f"/proc/{pid}").exists() for pid in workers)
        child.kill()
        child.wait(timeout=10)
        eventually(lambda: all(_gone(pid) for pid in workers), timeout=20)
    finally:
        child.kill()
        child.wait(timeout=10)


def _gone(pid: int) -> bool:
    """No process ``pid`` any more, or only its zombie (exited, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
