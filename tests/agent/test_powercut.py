"""Power-cut safety: `room-agent record` is SIGKILLed at random moments, again and again.

The input is a long synthetic session processed unpaced, so chunks are written every few
milliseconds and some kills land inside a write. After every kill the disk is checked as
the gateway would see it, and the next run must resume the same session.
"""

import hashlib
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.spool import Spool
from protocol.envelope import generate_private_key, open_chunk, public_key_to_text
from runtime.codec import decode
from tests.support.eventually import eventually
from tests.support.processes import Service
from tests.support.speech import make_session

pytestmark = pytest.mark.slow

KILLS = 24
MAX_DELAY_S = 0.15  # after the run's first new chunk: well before the input runs out
KEY = generate_private_key()
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")


@pytest.fixture(scope="module")
def long_input(tmp_path_factory):
    """10 minutes: processed unpaced in about half a second here, several times the longest
    wait before a kill."""
    return make_session(tmp_path_factory.mktemp("input") / "long.wav", 600, 20, seed=5).path


def chunk_seqs(session_dir: Path) -> list[int]:
    return sorted(int(p.name[:8]) for p in session_dir.glob("*.chunk"))


def wait_for_chunk_after(sessions: Path, seq: int, proc: Service, timeout: float = 30) -> None:
    def chunk_after() -> bool:
        for session_dir in sessions.glob("[!.]*"):
            if any(s > seq for s in chunk_seqs(session_dir)):
                return True
        if not proc.alive():
            pytest.fail(f"record exited early:\n{proc.log()}")  # no use waiting on
        raise AssertionError(proc.log())  # not yet

    # Polled often: the kill is to land at a random point after this chunk, not much later.
    eventually(chunk_after, timeout, interval=0.002, what=f"a chunk after seq {seq}")


def crash_state(session_dir: Path) -> list[str]:
    """What the kill interrupted, judged from the files it left."""
    found = []
    if list(session_dir.glob("*.tmp")):
        found.append("chunk write (tmp file)")
    journal = (session_dir / "journal.jsonl").read_bytes()
    if journal and not journal.endswith(b"\n"):
        found.append("journal append (torn line)")
    journaled = {
        json.loads(line)["seq"]
        for line in journal.splitlines()
        if line.endswith(b"}") and b'"type":"chunk"' in line
    }
    if set(chunk_seqs(session_dir)) - journaled:
        found.append("between rename and journal")
    return found


def check_disk(session_dir: Path, seen: dict[int, str]) -> None:
    """Every renamed chunk is whole, opens with the gateway key, holds FLAC, and a seq
    never comes back with other content."""
    for path in sorted(session_dir.glob("*.chunk")):
        blob = path.read_bytes()
        opened = open_chunk(blob, KEY)
        seq = int(path.name[:8])
        assert opened.header.seq == seq and opened.header.session_id == session_dir.name
        audio = decode(opened.audio)
        assert audio.duration_s == pytest.approx(opened.header.duration_s, abs=0.001)
        digest = hashlib.sha256(blob).hexdigest()
        assert seen.setdefault(seq, digest) == digest, f"seq {seq} was reused"


def check_pending(spool_dir: Path) -> None:
    """What the uplink would be offered: never a torn file, every chunk opens."""
    with Spool(spool_dir, 1024**3, 0) as spool:
        pending = spool.pending()
        assert pending
        for chunk in pending:
            open_chunk(spool.read(chunk.session_id, chunk.seq), KEY)
        assert spool.sessions()[0].lost == 0


def test_sigkill_during_recording_loses_nothing(tmp_path, long_input):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    state_dir = tmp_path / "state"
    sessions = state_dir / "spool" / "sessions"
    env = {
        "ROOM_AGENT_STATE_DIR": str(state_dir),
        "ROOM_AGENT_GATEWAY_PUBLIC_KEY": public_key_to_text(KEY.public_key()),
        "ROOM_AGENT_SPOOL__MIN_FREE_BYTES": "0",
    }
    argv = [ROOM_AGENT, "record", "--input", str(long_input), "--until-eof"]
    seen: dict[int, str] = {}
    interrupted: Counter[str] = Counter()
    started = time.monotonic()

    for kill in range(KILLS):
        proc = Service(argv, tmp_path / f"run-{kill}.log", env=env).start()
        wait_for_chunk_after(sessions, max(seen, default=-1), proc)
        time.sleep(rng.uniform(0, MAX_DELAY_S))
        assert proc.alive(), "record got to the end of its input before the kill"
        proc.kill()
        [session_dir] = [d for d in sessions.iterdir() if not d.name.startswith(".")]
        for what in crash_state(session_dir) or ["pipeline (no write in flight)"]:
            interrupted[what] += 1
        check_disk(session_dir, seen)
        if kill % 2:  # half the time the test's scan repairs, half the time the agent's own
            check_pending(state_dir / "spool")

    final = Service(argv, tmp_path / "final.log", env=env).start()
    assert final.proc.wait(120) == 0, final.log()
    summary = json.loads(final.log().strip().splitlines()[-1])
    assert summary["resumed"] and summary["reason"] == "stopped"
    [session_dir] = [d for d in sessions.iterdir() if not d.name.startswith(".")]
    assert summary["session_id"] == session_dir.name
    check_disk(session_dir, seen)

    with Spool(state_dir / "spool", 1024**3, 0) as spool:
        info = spool.session(session_dir.name)
        assert info.closed and info.lost == 0, "no chunk may be lost to a power cut"
        pending = spool.pending()
        assert [c.seq for c in pending] == list(range(info.next_seq)), "seqs unique, no gaps"
        for chunk in pending:
            open_chunk(spool.read(chunk.session_id, chunk.seq), KEY)
        for earlier, later in itertools.pairwise(pending):
            assert later.start_s >= earlier.start_s + earlier.duration_s - 0.001
        manifest = spool.manifest(session_dir.name)
        assert [c.seq for c in manifest.chunks] == [c.seq for c in pending]
        assert {c.seq: c.sha256 for c in manifest.chunks} == seen
        quarantined = spool.quarantined()
        assert all(e.reason.startswith("torn write") for e in quarantined)
        assert len(quarantined) == interrupted["chunk write (tmp file)"]

    mid_write = KILLS - interrupted["pipeline (no write in flight)"]
    print(
        f"\npower cut: {KILLS} kills (seed {seed}) in {time.monotonic() - started:.1f}s, "
        f"{mid_write} landed mid-write: {dict(interrupted)}; "
        f"{len(seen)} chunks, all intact; {len(quarantined)} torn tmp files quarantined"
    )
    assert os.listdir(state_dir / "spool" / "sessions") == [session_dir.name]
