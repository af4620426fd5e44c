"""The gateway's X25519 sealing key: room devices encrypt audio to its public half.

The private key is a PEM file (mode 0600) at ``sealing_key_file``; it is created once and
never overwritten by accident, since every chunk sealed to it would become unreadable.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.envelope import (
    EnvelopeError,
    generate_private_key,
    private_key_from_pem,
    private_key_to_pem,
    public_key_to_text,
)
from runtime.files import write_atomically, write_new


class KeyFileError(Exception):
    """The key file cannot be read or written; phrased for a person, path included."""


def create_key(path: Path, replace: bool = False) -> X25519PrivateKey:
    """Write a new private key; refuses to replace an existing one unless ``replace``."""
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
