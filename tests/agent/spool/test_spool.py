"""The spool on a real file system: durable writes, crash reconciliation, quarantine."""

import json
import os
import shutil
import stat

import numpy as np
import pytest

from agent.pipeline.seal import ChunkSealer
from agent.spool import (
    ChunkCorrupt,
    Spool,
    SpoolBusy,
    SpoolError,
    SpoolFull,
)
from protocol.envelope import generate_private_key, open_chunk
from runtime.codec import decode

GIB = 1024**3
KEY = generate_private_key()
SEALER = ChunkSealer("room-7", KEY.public_key())


def pcm(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(16_000 * seconds)) * 2000).astype(np.int16)


def seal(session: str, seq: int, seconds: float = 0.5) -> bytes:
    return SEALER.seal(session, seq, seq * 2.0, pcm(seconds, seq))


def open_spool(directory, max_bytes=GIB, min_free=0) -> Spool:
    return Spool(directory, max_bytes, min_free)


def fill(spool: Spool, session: str, count: int) -> list[bytes]:
    spool.create_session(session, "room-7")
    blobs = [seal(session, seq) for seq in range(count)]
    for blob in blobs:
        spool.append(blob)
    return blobs


def journal_lines(directory, session: str) -> list[dict]:
    text = (directory / "sessions" / session / "journal.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def chunk_path(directory, session: str, seq: int):
    return directory / "sessions" / session / f"{seq:08d}.chunk"


def test_chunks_round_trip_and_are_private(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 3)
        for seq, blob in enumerate(blobs):
            stored = spool.read("s1", seq)
            assert stored == blob
            audio = decode(open_chunk(stored, KEY).audio)
            assert np.array_equal(audio.pcm, pcm(0.5, seq))
        mode = chunk_path(tmp_path, "s1", 0).stat().st_mode
        assert stat.S_IMODE(mode) == 0o600
        assert not list((tmp_path / "sessions" / "s1").glob("*.tmp"))
        assert spool.usage().bytes == sum(len(b) for b in blobs)


def test_pending_is_oldest_session_first_then_seq(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "zz-older", 2)
        fill(spool, "aa-newer", 2)
        order = [(c.session_id, c.seq) for c in spool.pending()]
        assert order == [("zz-older", 0), ("zz-older", 1), ("aa-newer", 0), ("aa-newer", 1)]
    with open_spool(tmp_path) as spool:
        assert [(c.session_id, c.seq) for c in spool.pending()] == order


def test_seq_must_be_next_and_session_open(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
        with pytest.raises(SpoolError, match="not the next"):
            spool.append(seal("s1", 1))
        with pytest.raises(SpoolError, match="not the next"):
            spool.append(seal("s1", 5))
        with pytest.raises(SpoolError, match="no session"):
            spool.append(seal("other", 0))
        with pytest.raises(SpoolError, match="not a valid envelope"):
            spool.append(b"not sealed")
        spool.close_session("s1", "stopped")
        with pytest.raises(SpoolError, match="closed"):
            spool.append(seal("s1", 2))
        with pytest.raises(SpoolError, match="already exists"):
            spool.create_session("s1", "room-7")


def test_seq_is_never_reused_after_acks_and_restarts(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 3)
        for seq in range(3):
            assert spool.ack("s1", seq)
        assert spool.ack("s1", 2) is False, "acks are idempotent"
        assert spool.pending() == []
        assert not list((tmp_path / "sessions" / "s1").glob("*.chunk"))
    with open_spool(tmp_path) as spool:
        assert spool.next_seq("s1") == 3
        spool.append(seal("s1", 3))
        info = spool.session("s1")
        assert (info.chunks, info.pending, info.acked, info.next_seq) == (4, 1, 3, 4)


def test_manifest_lists_every_chunk_acked_or_not(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 3)
        spool.ack("s1", 0)
        with pytest.raises(SpoolError, match="still open"):
            spool.manifest("s1")
        manifest = spool.close_session("s1", "stopped")
        assert [c.seq for c in manifest.chunks] == [0, 1, 2]
        assert [c.bytes for c in manifest.chunks] == [len(b) for b in blobs]
        assert manifest.device_id == "room-7" and manifest.reason == "stopped"
        assert spool.close_session("s1", "error") == manifest, "closing twice changes nothing"
        assert spool.closed_manifests() == [manifest]


def test_forget_session_only_when_delivered_and_id_stays_reserved(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
        with pytest.raises(SpoolError, match="still open"):
            spool.forget_session("s1")
        spool.close_session("s1", "stopped")
        with pytest.raises(SpoolError, match="unacknowledged"):
            spool.forget_session("s1")
        spool.ack("s1", 0)
        spool.ack("s1", 1)
        spool.forget_session("s1")
        assert spool.sessions() == [] and spool.closed_manifests() == []
        assert not (tmp_path / "sessions" / "s1").exists()
    with open_spool(tmp_path) as spool, pytest.raises(SpoolError, match="already exists"):
        spool.create_session("s1", "room-7")
    # A crash after the forget was recorded, before the directory was gone: finished at start.
    (tmp_path / "sessions" / "s1").mkdir()
    (tmp_path / "sessions" / "s1" / "journal.jsonl").write_text('{"type":"ack","seq":1}\n')
    with open_spool(tmp_path) as spool:
        assert [(f.action, f.session_id) for f in spool.last_scan] == [("deleted", "s1")]
        assert not (tmp_path / "sessions" / "s1").exists() and spool.quarantined() == []


def test_second_process_is_refused_and_inspect_changes_nothing(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
        (tmp_path / "sessions" / "s1" / "00000002.tmp").write_bytes(b"in flight")
        with pytest.raises(SpoolBusy, match=f"pid {os.getpid()}"):
            open_spool(tmp_path)
        report = Spool.inspect(tmp_path)
        assert report.live and report.usage.chunks == 2
        assert report.findings == [], "an in-flight temporary file is not a problem"
        assert (tmp_path / "sessions" / "s1" / "00000002.tmp").exists()


# ---- crash windows: what a power cut at each step leaves behind ---------------------------


def test_crash_between_rename_and_journal_append(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 3)
    journal = tmp_path / "sessions" / "s1" / "journal.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    journal.write_text("".join(lines[:-1]))  # seq 2's record never made it
    with open_spool(tmp_path) as spool:
        assert [(f.action, f.seq) for f in spool.last_scan] == [("recovered", 2)]
        assert [c.seq for c in spool.pending()] == [0, 1, 2]
        assert spool.read("s1", 2) == blobs[2]
        assert spool.next_seq("s1") == 3
    assert journal_lines(tmp_path, "s1")[-1]["seq"] == 2, "the record is written back"


def test_crash_between_ack_and_delete(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
    with (tmp_path / "sessions" / "s1" / "journal.jsonl").open("a") as fh:
        fh.write('{"type":"ack","seq":0}\n')
    with open_spool(tmp_path) as spool:
        assert [(f.action, f.seq) for f in spool.last_scan] == [("deleted", 0)]
        assert [c.seq for c in spool.pending()] == [1]
        assert not chunk_path(tmp_path, "s1", 0).exists()
        assert spool.next_seq("s1") == 2


def test_torn_journal_tail_is_repaired(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
    journal = tmp_path / "sessions" / "s1" / "journal.jsonl"
    with journal.open("ab") as fh:
        fh.write(b'{"type":"close","reas')
    with open_spool(tmp_path) as spool:
        assert [f.action for f in spool.last_scan] == ["repaired"]
        assert not spool.session("s1").closed
        spool.close_session("s1", "interrupted")
    assert [line["type"] for line in journal_lines(tmp_path, "s1")][-1] == "close"


def test_unfinished_session_creation_is_cleared(tmp_path):
    staging = tmp_path / "sessions" / ".new-s9"
    staging.mkdir(parents=True)
    (staging / "journal.jsonl").write_text('{"type":"open"')
    with open_spool(tmp_path) as spool:
        assert [f.action for f in spool.last_scan] == ["deleted"]
        assert not staging.exists()
        spool.create_session("s9", "room-7")


# ---- corruption: quarantined, reported, never fatal, good audio untouched -----------------


def test_corrupt_files_are_quarantined_and_good_chunks_kept(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 6)
    session = tmp_path / "sessions" / "s1"
    chunk_path(tmp_path, "s1", 1).write_bytes(blobs[1][: len(blobs[1]) // 2])  # truncated
    flipped = bytearray(blobs[2])
    flipped[-40] ^= 0x01
    chunk_path(tmp_path, "s1", 2).write_bytes(bytes(flipped))  # bit rot in the ciphertext
    (session / "00000006.tmp").write_bytes(blobs[0][:100])  # torn write
    (session / "notes.txt").write_bytes(b"\x00garbage")
    (tmp_path / "sessions" / "not a session!").mkdir()
    (tmp_path / "stray.bin").write_bytes(os.urandom(64))

    with open_spool(tmp_path) as spool:
        found = {(f.path, f.action) for f in spool.last_scan}
        assert found == {
            ("sessions/s1/00000001.chunk", "quarantined"),
            ("sessions/s1/00000002.chunk", "quarantined"),
            ("sessions/s1/00000006.tmp", "quarantined"),
            ("sessions/s1/notes.txt", "quarantined"),
            ("sessions/not a session!", "quarantined"),
            ("stray.bin", "quarantined"),
        }
        reasons = {f.seq: f.reason for f in spool.last_scan if f.seq is not None}
        assert "shorter" in reasons[1] or "framing" in reasons[1]
        assert reasons[2] == "sealed sha256 differs from the journal"
        assert [c.seq for c in spool.pending()] == [0, 3, 4, 5]
        for seq in (0, 3, 4, 5):
            assert open_chunk(spool.read("s1", seq), KEY).header.seq == seq
        assert spool.next_seq("s1") == 6
        assert spool.usage().quarantined == 6
        manifest = spool.close_session("s1", "stopped")
        assert [c.seq for c in manifest.chunks] == [0, 3, 4, 5]
        stored = {e.original: e.stored for e in spool.quarantined()}
        assert stored["sessions/s1/00000002.chunk"] == "quarantine/s1/00000002.chunk"
        assert (tmp_path / "quarantine/s1/00000002.chunk").read_bytes() == bytes(flipped)
    with open_spool(tmp_path) as spool:
        assert spool.last_scan == [], "a second start finds nothing new"
        assert spool.session("s1").lost == 2


def test_broken_journal_lines_are_quarantined(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 3)
        spool.ack("s1", 0)
    journal = tmp_path / "sessions" / "s1" / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"type":"chunk","seq":"\xff\xfe"}\n'  # seq 1's record destroyed
    lines.insert(1, b"\x00\x00\x00\x00\n")
    journal.write_bytes(b"".join(lines))
    with open_spool(tmp_path) as spool:
        actions = sorted((f.action, f.reason) for f in spool.last_scan)
        assert actions == [
            ("quarantined", "unreadable journal line 2"),
            ("quarantined", "unreadable journal line 4"),
            ("recovered", "chunk missing from the journal"),
        ]
        assert [c.seq for c in spool.pending()] == [1, 2]
        assert spool.read("s1", 1) == blobs[1]
        assert spool.next_seq("s1") == 3
        assert [e.reason for e in spool.quarantined()] == ["unreadable journal lines"]
    for line in journal.read_text().splitlines():
        json.loads(line)


def test_lost_journal_is_rebuilt_from_chunk_headers(tmp_path):
    with open_spool(tmp_path) as spool:
        fill(spool, "s1", 2)
    (tmp_path / "sessions" / "s1" / "journal.jsonl").unlink()
    with open_spool(tmp_path) as spool:
        assert sorted(f.action for f in spool.last_scan) == ["recovered", "recovered", "repaired"]
        assert spool.session("s1").device_id == "room-7"
        assert [c.seq for c in spool.close_session("s1", "interrupted").chunks] == [0, 1]


def test_corruption_after_start_is_caught_on_read(tmp_path):
    with open_spool(tmp_path) as spool:
        blobs = fill(spool, "s1", 2)
        chunk_path(tmp_path, "s1", 0).write_bytes(blobs[0][:-1] + b"\x00")
        with pytest.raises(ChunkCorrupt, match="quarantined"):
            spool.read("s1", 0)
        assert [c.seq for c in spool.pending()] == [1]
        assert spool.usage().bytes == len(blobs[1])
        assert [e.stored for e in spool.quarantined()] == ["quarantine/s1/00000000.chunk"]


def test_quota_refuses_without_writing(tmp_path):
    blobs = [seal("s1", seq) for seq in range(4)]
    with Spool(tmp_path, len(blobs[0]) * 2 + 10, 0) as spool:
        spool.create_session("s1", "room-7")
        spool.append(blobs[0])
        spool.append(blobs[1])
        with pytest.raises(SpoolFull, match="quota") as caught:
            spool.append(blobs[2])
        assert caught.value.limit == "quota"
        assert sorted(p.name for p in (tmp_path / "sessions" / "s1").iterdir()) == [
            "00000000.chunk",
            "00000001.chunk",
            "journal.jsonl",
        ]
        spool.ack("s1", 0)
        spool.append(blobs[2])  # room again once the gateway has a chunk


class VanishingSpool(Spool):
    """The spool deleted (``rm -rf``) right after a check found it whole: the race a
    heartbeat's free-space look lost in CI (its thread died on FileNotFoundError)."""

    vanish_after_check = False

    def recover(self) -> bool:
        recovered = super().recover()
        if self.vanish_after_check:
            self.vanish_after_check = False
            gone = self.directory.with_name("gone")
            self.directory.rename(gone)
            shutil.rmtree(gone)
        return recovered


def test_free_space_is_known_when_the_spool_vanishes_right_after_its_check(tmp_path):
    with VanishingSpool(tmp_path / "spool", GIB, 0) as spool:
        fill(spool, "s-1", 2)
        spool.vanish_after_check = True
        assert spool.free_bytes() > 0
        assert spool.recover() is False, "recreated whole"
        assert (tmp_path / "spool").is_dir()
