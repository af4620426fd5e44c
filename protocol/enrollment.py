"""Enrolling a room device with a one-time code, instead of copying its files by hand.

`room-gateway device add` makes a short code (16 characters of Crockford base32, 80 bits,
shown as ``ABCD-EFGH-JKMN-PQRS``) and stores only what is derived from it: a lookup id and
the device's files sealed with a key derived from it, so the store alone enrolls nobody.
`room-agent enroll URL CODE` derives both from the code itself and asks:

    POST /v1/enroll  {"lookup": "<hex>", "device_key": "<X25519 public key, base64>"}
    200              {"device_id": "room-1", "sealed": "<base64>"}

The code never travels: the device sends the lookup id only, and opens the files with the
code-derived key. The gateway wraps its answer to ``device_key``, a key pair the device
makes for this one request, so a recording of the exchange is useless even to someone who
learns the code later; TLS, pinned to the fingerprint `device add` printed, keeps anyone
from standing in between. A code works once (the sealed files are deleted when it is
used), expires, and wrong lookups are rate-limited.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field

ENROLL_PATH = "/v1/enroll"
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
CODE_CHARS = 16
_NONCE = 12
_CONFUSED = str.maketrans({"I": "1", "L": "1", "O": "0", "U": "V"})


class EnrollmentError(ValueError):
    """A code that is not one, or files that do not open with it (one line, no secret)."""


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lookup: str = Field(pattern=r"^[0-9a-f]{64}$", description="derived from the code")
    device_key: str = Field(max_length=64, description="X25519 public key, base64")


class EnrollAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str
    sealed: str = Field(description="the device's files, wrapped to device_key")


class DeviceFiles(BaseModel):
    """What a device gets: file name -> content, and where the gateway meant them to go."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    install_dir: str
    files: dict[str, str]


def new_code() -> str:
    return format_code("".join(secrets.choice(ALPHABET) for _ in range(CODE_CHARS)))


def format_code(raw: str) -> str:
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def normalize_code(code: str) -> str:
    """The 16 characters, whatever a person typed: case, dashes, spaces, I/L/O for 1/1/0."""
    raw = re.sub(r"[\s-]", "", code).upper().translate(_CONFUSED)
    if len(raw) != CODE_CHARS or any(c not in ALPHABET for c in raw):
        raise EnrollmentError(
            f"an enrollment code is {CODE_CHARS} letters and digits (XXXX-XXXX-XXXX-XXXX),"
            " as `room-gateway device add` printed it"
        )
    return raw


def lookup_id(code: str) -> str:
    return _derive(code, b"room-audio enrollment lookup").hex()


def files_key(code: str) -> bytes:
    return _derive(code, b"room-audio enrollment files")


def seal_files(files: DeviceFiles, code: str) -> str:
    """What the gateway stores: the files, sealed with the code-derived key."""
    return _seal(files_key(code), files.model_dump_json().encode(), b"files")


def open_files(sealed: str, code: str) -> DeviceFiles:
    try:
        return DeviceFiles.model_validate_json(_open(files_key(code), sealed, b"files"))
    except (EnrollmentError, ValueError):
        raise EnrollmentError("the enrollment answer does not open with this code") from None


def wrap(sealed: str, device_key: X25519PublicKey) -> str:
    """The gateway's answer: the sealed files wrapped to the device's one-request key."""
    ephemeral = X25519PrivateKey.generate()
    shared = ephemeral.exchange(device_key)
    epk = ephemeral.public_key().public_bytes_raw()
    key = _derive(shared.hex() + epk.hex(), b"room-audio enrollment wrap")
    return base64.b64encode(epk).decode() + "." + _seal(key, sealed.encode(), b"wrap")


def unwrap(wrapped: str, device_key: X25519PrivateKey) -> str:
    try:
        epk_text, _, body = wrapped.partition(".")
        epk = base64.b64decode(epk_text, validate=True)
        shared = device_key.exchange(X25519PublicKey.from_public_bytes(epk))
    except ValueError:
        raise EnrollmentError("the enrollment answer is not one") from None
    key = _derive(shared.hex() + epk.hex(), b"room-audio enrollment wrap")
    return _open(key, body, b"wrap").decode()


def public_key_text(key: X25519PublicKey) -> str:
    return base64.b64encode(key.public_bytes_raw()).decode()


def public_key_from(text: str) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        raise EnrollmentError("device_key is not an X25519 public key") from None


def certificate_fingerprint(der: bytes) -> str:
    """``sha256:<hex>`` of a certificate (DER), as `device add` prints it for pinning."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def files_json(files: dict[str, bytes]) -> dict[str, str]:
    """File contents as text (PEM, TOML and the secrets are text)."""
    return {name: data.decode() for name, data in files.items()}


def _derive(material: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
        material.encode()
    )


def _seal(key: bytes, data: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(_NONCE)
    return base64.b64encode(nonce + ChaCha20Poly1305(key).encrypt(nonce, data, aad)).decode()


def _open(key: bytes, sealed: str, aad: bytes) -> bytes:
    try:
        blob = base64.b64decode(sealed, validate=True)
        return ChaCha20Poly1305(key).decrypt(blob[:_NONCE], blob[_NONCE:], aad)
    except (ValueError, InvalidTag):
        raise EnrollmentError("the enrollment answer does not open with this code") from None
