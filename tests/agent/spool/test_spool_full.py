"""A really full disk (a 3 MB tmpfs) and the spool quota: recording stops cleanly, the
state says spool_full, nothing already spooled is deleted, the CLI says so in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.pipeline.filesource import FileSource
from agent.pipeline.recorder import Recorder, RecorderListener
from agent.pipeline.seal import ChunkSealer
from agent.settings import AgentSettings
from agent.spool import METADATA_RESERVE, Spool, SpoolFull
from protocol.envelope import generate_private_key, open_chunk, public_key_to_text
from runtime.codec import decode
from tests.support.speech import make_session

KEY = generate_private_key()
PUBLIC = public_key_to_text(KEY.public_key())
GIB = 1024**3
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    short = make_session(folder / "short.wav", 40, 20, seed=11)
    long = make_session(folder / "long.wav", 420, 20, seed=5)  # ~3 MB of FLAC speech
    return short.path, long.path


@pytest.fixture
def tiny_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def record(state_dir, wav, **env):
    environment = {
        **os.environ,
        "ROOM_AGENT_STATE_DIR": str(state_dir),
        "ROOM_AGENT_GATEWAY_PUBLIC_KEY": PUBLIC,
        "ROOM_AGENT_SPOOL__MIN_FREE_BYTES": "0",
        **env,
    }
    environment.pop("ROOM_AGENT_CONFIG", None)
    argv = [ROOM_AGENT, "record", "--input", str(wav), "--until-eof"]
    return subprocess.run(argv, capture_output=True, text=True, env=environment, timeout=120)


def chunk_files(spool_dir) -> dict[str, bytes]:
    return {
        str(p.relative_to(spool_dir)): p.read_bytes()
        for p in sorted((spool_dir / "sessions").rglob("*.chunk"))
    }


def assert_all_open(files: dict[str, bytes]) -> None:
    for name, blob in files.items():
        opened = open_chunk(blob, KEY)
        assert decode(opened.audio).duration_s == pytest.approx(
            opened.header.duration_s, abs=0.001
        ), name


def test_full_disk_stops_recording_and_keeps_everything(tiny_disk, inputs):
    short, long = inputs
    spool_dir = tiny_disk / "spool"
    first = record(tiny_disk, short)
    assert first.returncode == 0, first.stderr
    before = chunk_files(spool_dir)
    assert before

    full = record(tiny_disk, long)
    assert full.returncode == 2
    assert full.stderr.count("\n") == 1 and "Traceback" not in full.stderr
    assert "spool full: the disk would have less than 0 bytes free" in full.stderr
    assert "recording stopped" in full.stderr
    summary = json.loads(full.stdout)
    assert (summary["state"], summary["reason"], summary["last_error"]) == (
        "closed",
        "spool_full",
        "spool_full",
    )
    assert summary["chunks"] >= 3 and summary["unspooled_s"] > 0
    after = chunk_files(spool_dir)
    assert {k: after[k] for k in before} == before, "nothing spooled before was touched"
    assert len(after) == len(before) + summary["chunks"]
    assert_all_open(after)
    assert not list(spool_dir.rglob("*.tmp"))
    stat = os.statvfs(tiny_disk)
    assert stat.f_bavail * stat.f_frsize < 400_000, "the disk really is (nearly) full"

    again = record(tiny_disk, short)
    assert again.returncode == 2 and "nothing recorded" in again.stderr
    assert again.stderr.count("\n") == 1 and again.stdout == ""
    with Spool(spool_dir, GIB, 0) as spool:
        sessions = spool.sessions()
        assert [s.reason for s in sessions] == ["stopped", "spool_full"]
        # Once the gateway holds the chunks, they are deleted and recording works again.
        for chunk in spool.pending():
            spool.ack(chunk.session_id, chunk.seq)
    assert record(tiny_disk, short).returncode == 0


def test_enospc_during_the_write_is_spool_full(tiny_disk):
    """The free-space check can be outrun (another process fills the disk in between):
    ENOSPC in the middle of a write must also end as SpoolFull with nothing left behind."""

    class BlindSpool(Spool):
        def free_bytes(self) -> int:
            return GIB

    sealer = ChunkSealer("room-3", KEY.public_key())
    pcm = np.frombuffer(os.urandom(16_000 * 2 * 4), dtype=np.int16)  # incompressible 4 s
    with BlindSpool(tiny_disk / "spool", GIB, 0) as spool:
        spool.create_session("s1", "room-3")
        spool.append(sealer.seal("s1", 0, 0.0, pcm))
        kept = chunk_files(tiny_disk / "spool")
        filler = tiny_disk / "filler"
        with filler.open("wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        filler.write_bytes(filler.read_bytes()[:-40_000])  # 40 kB left: less than a chunk
        journal = (tiny_disk / "spool/sessions/s1/journal.jsonl").read_bytes()
        with pytest.raises(SpoolFull, match="disk is full"):
            spool.append(sealer.seal("s1", 1, 4.0, pcm))
        assert chunk_files(tiny_disk / "spool") == kept
        assert not list((tiny_disk / "spool").rglob("*.tmp"))
        assert (tiny_disk / "spool/sessions/s1/journal.jsonl").read_bytes() == journal
        assert spool.next_seq("s1") == 1, "a failed write uses no seq"
        filler.unlink()
        spool.append(sealer.seal("s1", 1, 4.0, pcm))
        assert_all_open(chunk_files(tiny_disk / "spool"))


def test_quota_stops_recording(tmp_path, inputs):
    _, long = inputs
    result = record(tmp_path, long, ROOM_AGENT_SPOOL__MAX_BYTES=str(1024**2))
    assert result.returncode == 2
    assert result.stderr.startswith("room-agent: spool full: quota of 1048576 bytes reached")
    assert result.stderr.count("\n") == 1
    files = chunk_files(tmp_path / "spool")
    assert 0 < sum(len(b) for b in files.values()) <= 1024**2
    assert_all_open(files)
    assert json.loads(result.stdout)["chunks"] == len(files)


def test_recorder_state_says_spool_full(tmp_path, inputs):
    _, long = inputs
    settings = AgentSettings(state_dir=tmp_path, gateway_public_key=PUBLIC)
    closed = []

    class Closed(RecorderListener):
        def session_closed(self, event, manifest):
            closed.append((event.reason, len(manifest.chunks)))

    quota = 1024**2
    with Spool(settings.spool_dir, quota, 0) as spool:
        recorder = Recorder(settings, spool, lambda: FileSource(long))
        recorder.add_listener(Closed())
        recorder.start("s1")
        recorder.wait(60)
        snapshot = recorder.state
        assert (snapshot.state, snapshot.reason, snapshot.last_error) == (
            "closed",
            "spool_full",
            "spool_full",
        )
        assert "quota" in snapshot.detail and snapshot.unspooled_s > 0
        assert closed == [("spool_full", snapshot.chunks)]
        assert spool.usage().bytes + METADATA_RESERVE > quota * 0.8
        with pytest.raises(SpoolFull):
            recorder.start("s2")
        assert recorder.state.reason == "spool_full"
        assert [s.session_id for s in spool.sessions()] == ["s1"]
