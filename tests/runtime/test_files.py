"""runtime.files: the one durable write both programs use."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.files import DurableFile, append_line, read_lines, write_atomically, write_new
from tests.support.fsyncs import record_fsyncs


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: the modes asked for must still be exactly the modes."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_get_exactly_the_mode_asked_for_whatever_the_umask(
    tmp_path: Path, open_umask: None
) -> None:
    private = write_atomically(tmp_path / "key.pem", b"secret")
    public = write_atomically(tmp_path / "cert.pem", b"cert", 0o644)
    new = write_new(tmp_path / "sealing.pem", b"key")
    with DurableFile(tmp_path / "export" / "audio.flac") as file:
        file.write(b"fLaC")
    append_line(tmp_path / "journal.jsonl", "{}")
    assert [mode(p) for p in (private, public, new)] == [0o600, 0o644, 0o600]
    assert mode(tmp_path / "export" / "audio.flac") == 0o600
    assert mode(tmp_path / "export") == 0o700
    assert mode(tmp_path / "journal.jsonl") == 0o600


def test_a_replaced_file_leaves_no_temporary_behind(tmp_path: Path) -> None:
    target = tmp_path / "flag"
    write_atomically(target, b"old")
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag"]


def test_a_failed_write_removes_its_temporary_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "flag"
    write_atomically(target, b"old")
    with pytest.raises(TypeError):
        write_atomically(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flag"]


def test_a_replace_syncs_the_file_and_its_directory_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = record_fsyncs(monkeypatch)
    write_atomically(tmp_path / "kept", b"health information")
    assert len(synced) == 2  # the file before its rename, the directory after
    synced.clear()
    write_atomically(tmp_path / "status", b"replaced in a moment", durable=False)
    assert synced == []
    assert (tmp_path / "status").read_bytes() == b"replaced in a moment"
    assert mode(tmp_path / "status") == 0o600


def test_parents_are_made_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomically(tmp_path / "a" / "b", b"x")
    write_atomically(tmp_path / "a" / "b", b"x", parents=True)
    assert mode(tmp_path / "a") == 0o700


def test_write_new_never_replaces_a_file(tmp_path: Path) -> None:
    target = write_new(tmp_path / "sealing.pem", b"first")
    with pytest.raises(FileExistsError):
        write_new(target, b"second")
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sealing.pem"]


def test_a_durable_file_that_fails_half_way_never_appears(tmp_path: Path) -> None:
    target = tmp_path / "audio.flac"
    with pytest.raises(RuntimeError), DurableFile(target) as file:
        file.write(b"half")
        raise RuntimeError("the stream broke")
    assert list(tmp_path.iterdir()) == []


def test_appended_lines_are_read_back_without_blanks(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    assert read_lines(journal) == []
    append_line(journal, '{"a": 1}')
    append_line(journal, '{"b": 2}')
    assert read_lines(journal) == [b'{"a": 1}', b'{"b": 2}']
