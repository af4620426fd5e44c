"""Session audio at rest: in the store every replica shares, encrypted, never plain on disk.

Where: the gateway's own store (SQLite or PostgreSQL), not files on one replica's disk, so
any replica can assemble and upload whatever any replica received, with nothing else to
run or share (no network file system), and the chunk rows, the audio and their deletion
commit together on both engines. Sealed chunks are kept as they arrived (encrypted to the
sealing key, ``chunks.sealed``); a session's assembled (or partner-given) audio is split
into parts of ``PART_BYTES``, each encrypted with AES-256-GCM under the audio key and
stored as a row of ``audio_parts`` in its own short transaction, so a long session never
makes a huge transaction or sits whole in memory. A part's nonce is random; its
associated data binds it to its audio id and position, so parts cannot be swapped or
replayed into another session. A session's ``audio_path`` is then ``vault:<audio id>``:
each write gets a new id, so a replica that takes over an assembly never mixes its parts
with a dead one's; the parts of an id nobody points to are deleted with the session's.

The audio key (32 random bytes, ``audio_key_file``, default ``state_dir/audio-key``, mode
0600) is made on first start; replicas must share it like the sealing key. Its
fingerprint is recorded in the store, and a replica whose key differs refuses to start
(it could not read the others' audio) with one line saying which file to copy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.sessions.audio_files import AudioRejected, AudioTooLarge
from gateway.store import Connection, Database
from runtime.files import DurableFile, write_atomically

PART_BYTES = 1024 * 1024
REF_PREFIX = "vault:"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


class AudioKeyError(Exception):
    """The audio key cannot be read, made, or is not the one the store's audio uses."""


class AudioUnreadable(Exception):
    """Stored audio is missing or does not decrypt (wrong key, tampered)."""


def is_vault_ref(audio_path: str | None) -> bool:
    return audio_path is not None and audio_path.startswith(REF_PREFIX)


def load_or_create_key(path: Path) -> bytes:
    """The audio key at ``path``, made (mode 0600) if there is none yet."""
    try:
        if not path.exists():
            write_atomically(
                path, base64.b64encode(secrets.token_bytes(KEY_BYTES)) + b"\n", parents=True
            )
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except (OSError, ValueError) as exc:
        raise AudioKeyError(f"{path}: cannot read or make the audio key ({exc})") from None
    if len(key) != KEY_BYTES:
        raise AudioKeyError(f"{path}: not an audio key (expected {KEY_BYTES} bytes, base64)")
    return key


def fingerprint(key: bytes) -> str:
    return "sha256:" + hashlib.sha256(b"room-gateway audio key\0" + key).hexdigest()[:32]


def register_key(conn: Connection, key_fingerprint: str, path: Path) -> None:
    """Record the key's fingerprint on first use; refuse a key other than the recorded."""
    row = conn.execute("SELECT fingerprint FROM audio_key WHERE id = 1").fetchone()
    if row is None:
        conn.execute(
            "INSERT INTO audio_key (id, fingerprint, created_at) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO NOTHING",
            (key_fingerprint, time.time()),
        )
        row = conn.execute("SELECT fingerprint FROM audio_key WHERE id = 1").fetchone()
    if row["fingerprint"] != key_fingerprint:
        raise AudioKeyError(
            f"{path}: this audio key ({key_fingerprint}) is not the one the store's audio is"
            f" encrypted with ({row['fingerprint']}): copy the audio_key_file of a replica"
            " that runs to this one"
        )


def open_vault(db: Database, key_path: Path) -> AudioVault:
    """The vault with the audio key at ``key_path`` (made on first start), checked against
    the key the store's audio is encrypted with; AudioKeyError (one line) if it is not."""
    key = load_or_create_key(key_path)
    db.call(register_key, fingerprint(key), key_path)
    return AudioVault(db, key)


class AudioVault:
    """Writes and reads session audio in the store; blocking calls run off the loop."""

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._aead = AESGCM(key)

    # --- writing ------------------------------------------------------------------------------

    async def store_stream(
        self, session_id: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> str:
        """An HTTP body as the session's audio; returns its ``vault:`` reference."""
        writer = _Writer(self, session_id, max_bytes)
        async for chunk in chunks:
            for part in writer.add(chunk):
                await self._db.run(self._insert, writer.audio_id, session_id, part)
        for part in writer.finish():
            await self._db.run(self._insert, writer.audio_id, session_id, part)
        return writer.ref

    def store_file(self, session_id: str, file: BinaryIO, max_bytes: int) -> str:
        """Blocking: a file's content (read from its current position) as the audio."""
        writer = _Writer(self, session_id, max_bytes)
        while block := file.read(PART_BYTES):
            for part in writer.add(block):
                self._db.call(self._insert, writer.audio_id, session_id, part)
        for part in writer.finish():
            self._db.call(self._insert, writer.audio_id, session_id, part)
        return writer.ref

    def _insert(self, conn: Connection, audio_id: str, session_id: str, part: _Part) -> None:
        conn.execute(
            "INSERT INTO audio_parts (audio_id, part, session_id, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (audio_id, part) DO NOTHING",
            (audio_id, part.index, session_id, part.sealed),
        )

    def seal(self, audio_id: str, index: int, plain: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plain, _aad(audio_id, index))

    # --- reading ------------------------------------------------------------------------------

    async def size(self, ref: str) -> int:
        """Plain bytes of the audio (for Content-Length)."""
        row = await self._db.run(_totals, _audio_id(ref), write=False)
        if row is None:
            raise AudioUnreadable(f"audio {ref} is not in the store")
        parts, stored = row
        return stored - parts * (NONCE_BYTES + TAG_BYTES)

    async def read(self, ref: str) -> AsyncIterator[bytes]:
        """The plain audio, a part at a time (one short read transaction each)."""
        audio_id = _audio_id(ref)
        index = 0
        while True:
            sealed = await self._db.run(_part, audio_id, index, write=False)
            if sealed is None:
                if index == 0:
                    raise AudioUnreadable(f"audio {ref} is not in the store")
                return
            yield await asyncio.to_thread(self._open, audio_id, index, sealed)
            index += 1

    def _open(self, audio_id: str, index: int, sealed: bytes) -> bytes:
        nonce, body = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, body, _aad(audio_id, index))
        except InvalidTag:
            raise AudioUnreadable(f"audio {audio_id} part {index} does not decrypt") from None


def export_audio(vault: AudioVault, ref: str, directory: Path, name: str) -> Path:
    """Blocking: write stored audio, decrypted, to ``directory/name.flac`` (or .ogg): an
    operator's explicit export (``device unclaimed --export``); returns the path."""

    async def collect(file: DurableFile) -> None:
        async for part in vault.read(ref):
            file.write(part)

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"{name}.part-unknown"
    with DurableFile(target) as file:
        asyncio.run(collect(file))
    with target.open("rb") as written:
        suffix = ".ogg" if written.read(4) == b"OggS" else ".flac"
    return target.replace(target.with_suffix(suffix))


def delete_session_audio(conn: Connection, session_id: str) -> int:
    """Retention: every stored part of the session's audio, and its chunks' sealed bytes
    (the chunk rows stay, so a repeated upload still gets the right answer)."""
    deleted = conn.execute("DELETE FROM audio_parts WHERE session_id = ?", (session_id,))
    conn.execute("UPDATE chunks SET sealed = NULL WHERE session_id = ?", (session_id,))
    return deleted.rowcount


class _Part:
    __slots__ = ("index", "sealed")

    def __init__(self, index: int, sealed: bytes) -> None:
        self.index = index
        self.sealed = sealed


class _Writer:
    """Cuts a stream into parts of PART_BYTES and seals each, enforcing the size limit."""

    def __init__(self, vault: AudioVault, session_id: str, max_bytes: int) -> None:
        self.audio_id = f"{session_id}.{secrets.token_hex(8)}"
        self.ref = REF_PREFIX + self.audio_id
        self._vault = vault
        self._max_bytes = max_bytes
        self._pending = bytearray()
        self._size = 0
        self._index = 0

    def add(self, data: bytes) -> Iterator[_Part]:
        self._size += len(data)
        if self._size > self._max_bytes:
            raise AudioTooLarge(f"audio exceeds {self._max_bytes} bytes")
        self._pending += data
        while len(self._pending) >= PART_BYTES:
            yield self._cut(bytes(self._pending[:PART_BYTES]))
            del self._pending[:PART_BYTES]

    def finish(self) -> Iterator[_Part]:
        if self._size == 0:
            raise AudioRejected("audio is empty")
        if self._pending:
            yield self._cut(bytes(self._pending))
            self._pending.clear()

    def _cut(self, plain: bytes) -> _Part:
        part = _Part(self._index, self._vault.seal(self.audio_id, self._index, plain))
        self._index += 1
        return part


def _aad(audio_id: str, index: int) -> bytes:
    return f"room-gateway audio\0{audio_id}\0{index}".encode()


def _audio_id(ref: str) -> str:
    if not is_vault_ref(ref):
        raise AudioUnreadable("not a stored audio reference")
    return ref.removeprefix(REF_PREFIX)


def _totals(conn: Connection, audio_id: str) -> tuple[int, int] | None:
    row = conn.execute(
        "SELECT COUNT(*) AS parts, COALESCE(SUM(LENGTH(data)), 0) AS stored FROM audio_parts"
        " WHERE audio_id = ?",
        (audio_id,),
    ).fetchone()
    return (int(row["parts"]), int(row["stored"])) if row["parts"] else None


def _part(conn: Connection, audio_id: str, index: int) -> bytes | None:
    row = conn.execute(
        "SELECT data FROM audio_parts WHERE audio_id = ? AND part = ?", (audio_id, index)
    ).fetchone()
    return bytes(row["data"]) if row is not None else None


def memory_file(name: str) -> int:
    """A file descriptor for audio being encoded: in memory (memfd), never on a disk."""
    return os.memfd_create(name, os.MFD_CLOEXEC)
