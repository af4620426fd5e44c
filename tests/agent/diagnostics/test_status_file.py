"""The status file is rewritten every few seconds while recording: atomically, so a reader
never sees half of it, but never synced, so an SD card is not worn by a sync each time
(a snapshot lost to a power cut is simply written again by the next one)."""

import stat
from datetime import UTC, datetime

from agent.diagnostics.status_file import StatusSnapshot, read_snapshot, write_snapshot
from tests.support.fsyncs import record_fsyncs


def snapshot(pid: int) -> StatusSnapshot:
    now = datetime.now(UTC)
    return StatusSnapshot(
        pid=pid,
        version="0",
        device_id="room-1",
        started_at=now,
        written_at=now,
        recorder="idle",
        mqtt_enabled=False,
    )


def test_the_status_file_is_replaced_whole_without_a_sync(tmp_path, monkeypatch):
    synced = record_fsyncs(monkeypatch)
    path = tmp_path / "status.json"
    write_snapshot(path, snapshot(1))
    write_snapshot(path, snapshot(2))

    assert synced == [], f"{len(synced)} fsync calls for two status writes"
    written = read_snapshot(path)
    assert written is not None and written.pid == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left
