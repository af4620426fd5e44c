"""Session audio at rest in the store, on both engines: split into encrypted parts that
only the audio key opens, in order, bound to their place; a replica with another key
refuses to start rather than write audio the others cannot read; retention deletes it."""

from __future__ import annotations

import asyncio
import io
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.sessions.audio_vault import (
    PART_BYTES,
    AudioKeyError,
    AudioUnreadable,
    AudioVault,
    delete_session_audio,
    open_vault,
)
from gateway.store import Database, Location


@pytest.fixture
def db(store_location: Location) -> Iterator[Database]:
    database = Database.open(store_location)
    yield database
    database.close()


async def body(data: bytes, piece: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), piece):
        yield data[start : start + piece]


def read_all(vault: AudioVault, ref: str) -> bytes:
    async def collect() -> bytes:
        return b"".join([part async for part in vault.read(ref)])

    return asyncio.run(collect())


def test_audio_is_stored_in_encrypted_parts_and_read_back_whole(db: Database, tmp_path: Path):
    vault = open_vault(db, tmp_path / "audio-key")
    audio = b"fLaC" + secrets.token_bytes(2 * PART_BYTES + 12_345)
    ref = asyncio.run(vault.store_stream("ses_1", body(audio), 10**8))
    parts = db.call(
        lambda c: c.execute("SELECT data FROM audio_parts WHERE session_id = 'ses_1'").fetchall(),
        write=False,
    )
    assert len(parts) == 3 and not any(b"fLaC" in bytes(row[0]) for row in parts)
    assert asyncio.run(vault.size(ref)) == len(audio)
    assert read_all(vault, ref) == audio
    again = vault.store_file("ses_1", io.BytesIO(audio), 10**8)  # another write: its own id
    assert again != ref and read_all(vault, again) == audio
    assert db.call(delete_session_audio, "ses_1") == 6
    with pytest.raises(AudioUnreadable):
        asyncio.run(vault.size(ref))


def test_a_swapped_or_altered_part_does_not_decrypt(db: Database, tmp_path: Path):
    vault = open_vault(db, tmp_path / "audio-key")
    ref = vault.store_file("ses_2", io.BytesIO(secrets.token_bytes(PART_BYTES + 10)), 10**8)
    db.call(  # part 1's bytes put in part 0's place
        lambda c: c.execute(
            "UPDATE audio_parts SET data = (SELECT data FROM audio_parts WHERE part = 1)"
            " WHERE session_id = 'ses_2' AND part = 0"
        )
    )
    with pytest.raises(AudioUnreadable, match="does not decrypt"):
        read_all(vault, ref)


def test_a_replica_with_another_audio_key_refuses_to_start(db: Database, tmp_path: Path):
    first = tmp_path / "a" / "audio-key"
    open_vault(db, first)
    assert first.stat().st_mode & 0o777 == 0o600
    open_vault(db, first)  # the same key again: fine
    with pytest.raises(AudioKeyError) as refused:
        open_vault(db, tmp_path / "b" / "audio-key")  # a replica that made its own
    message = str(refused.value)
    assert "\n" not in message and "is not the one the store's audio is encrypted with" in message
    assert "copy the audio_key_file of a replica that runs" in message
    (tmp_path / "b" / "audio-key").write_bytes(first.read_bytes())
    open_vault(db, tmp_path / "b" / "audio-key")
