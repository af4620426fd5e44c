"""The gateway's X25519 sealing key: room devices encrypt audio to its public half.

The private key is a PEM file (mode 0600) at ``sealing_key_file``; it is created once and
never overwritten by accident, since every chunk sealed to it would become unreadable.

Rotation (``keygen --force``) keeps the old key for opening: it is first written, fsynced,
to ``retired-keys/<fingerprint>.pem`` beside the key (mode 0600, directory 0700), and only
then replaced. Devices seal to the new key once they have its public half; chunks still in
their spools, sealed to a retired key, are opened with it at ingest and at assembly
(:class:`SealingKeys`). Replicas copy ``retired-keys/`` with the key. The audio key (the
store's vault, ``audio_key_file``) is another key and is never touched by a rotation.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.envelope import (
    EnvelopeError,
    OpenedChunk,
    WrongKey,
    generate_private_key,
    key_fingerprint,
    open_chunk,
    private_key_from_pem,
    private_key_to_pem,
    public_key_to_text,
)
from runtime.files import write_atomically, write_new


class KeyFileError(Exception):
    """The key file cannot be read or written; phrased for a person, path included."""


RETIRED_DIR = "retired-keys"


def retired_dir(path: Path) -> Path:
    """Where the keys ``path`` held before are kept for opening."""
    return path.parent / RETIRED_DIR


def retire_key(path: Path) -> Path | None:
    """Keep the key now at ``path`` (if any) in retired-keys/, durably, before it is
    replaced; returns where. KeyFileError if it cannot be kept (then nothing is replaced)."""
    if not path.exists():
        return None
    old = load_key(path)
    name = key_fingerprint(old.public_key()).removeprefix("sha256:")[:32] + ".pem"
    target = retired_dir(path) / name
    try:
        target.parent.mkdir(mode=0o700, exist_ok=True)
        write_atomically(target, private_key_to_pem(old))
    except OSError as exc:
        raise KeyFileError(
            f"{target}: cannot keep the old key ({exc.strerror}); the key was not replaced"
        ) from None
    return target


def rotate_key(path: Path) -> tuple[X25519PrivateKey, Path | None]:
    """A new key at ``path``, the old one kept first (``retire_key``); returns the new key
    and where the old one is."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    kept = retire_key(path)
    return create_key(path, replace=True), kept


def create_key(path: Path, replace: bool = False) -> X25519PrivateKey:
    """Write a new private key; refuses to replace an existing one unless ``replace``
    (``rotate_key`` keeps the old one for opening first: use that)."""
    key = generate_private_key()
    pem = private_key_to_pem(key)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if replace:
            write_atomically(path, pem)
        else:
            write_new(path, pem)  # fails if the key exists, even if created meanwhile
    except FileExistsError:
        raise KeyFileError(f"{path}: a sealing key exists already (--force replaces it)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write the key ({exc.strerror})") from None
    return key


def load_key(path: Path) -> X25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no sealing key (run: room-gateway keygen)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key ({exc.strerror})") from None
    try:
        return private_key_from_pem(data)
    except EnvelopeError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def public_text(key: X25519PrivateKey) -> str:
    """What goes into each device's ``gateway_public_key``."""
    return public_key_to_text(key.public_key())


def load_retired(path: Path) -> list[X25519PrivateKey]:
    """The keys retired from ``path``, oldest file first; KeyFileError names a bad one."""
    directory = retired_dir(path)
    try:
        files = sorted(directory.glob("*.pem"), key=lambda file: file.stat().st_mtime_ns)
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot list the retired keys ({exc.strerror})") from None
    return [load_key(file) for file in files]


class SealingKeys:
    """The sealing key and the retired ones, as the files are now: the files are looked at
    (one stat each) on every use and read again when they changed, so a ``keygen --force``
    takes effect in a running gateway without a restart. No key file: ``current`` is None
    and nothing opens (ingest answers 503 until keygen)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[object, ...] | None = None
        self._current: X25519PrivateKey | None = None
        self._all: list[X25519PrivateKey] = []
        self.error: str | None = None
        # One thread reads changed files; the others wait for it. The stamp is published
        # last, so no thread takes the new stamp with the old (or no) keys.
        self._reading = threading.Lock()

    def current(self) -> X25519PrivateKey | None:
        """The key devices seal to now."""
        self._refresh()
        return self._current

    def open(self, blob: bytes) -> OpenedChunk:
        """Open a chunk sealed to the current key or a retired one; WrongKey if to none
        (other EnvelopeErrors as open_chunk raises them)."""
        self._refresh()
        for key in self._all:
            try:
                return open_chunk(blob, key)
            except WrongKey:
                continue
        raise WrongKey("chunk is sealed to another gateway key (not this one, nor a retired one)")

    def _refresh(self) -> None:
        seen = (_stamp(self.path), _stamp(retired_dir(self.path)))
        if seen == self._seen:
            return
        with self._reading:
            if seen != self._seen:
                self._read(seen)

    def _read(self, seen: tuple[object, ...]) -> None:
        current: X25519PrivateKey | None = None
        keys: list[X25519PrivateKey] = []
        self.error = None
        try:
            if self.path.exists():
                current = load_key(self.path)
                keys.append(current)
            keys.extend(reversed(load_retired(self.path)))  # newest retired first
        except KeyFileError as exc:
            self.error = str(exc)
        self._current, self._all = current, keys
        self._seen = seen


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)
