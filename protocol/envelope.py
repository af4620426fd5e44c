"""The sealed chunk: one encoded audio chunk encrypted to the gateway's X25519 public key.

The room device holds only the gateway's public key, so a stolen device or SD card reveals
no session audio. Each chunk gets a fresh ephemeral key (ECIES): X25519 -> HKDF-SHA256 ->
ChaCha20-Poly1305 (fast without AES instructions, as on a Raspberry Pi 4). Everything
before the ciphertext, including the JSON header, is authenticated as associated data, so
the gateway can read the header before decrypting and still trust it after.

Layout, integers big-endian::

    magic      4   b"RAEC"
    version    1   1
    key_id     8   first 8 bytes of sha256(recipient public key)
    hlen       2   length of the header
    clen       4   length of the ciphertext, tag included
    header  hlen   ChunkHeader as canonical JSON (sorted keys, compact)
    epk       32   ephemeral X25519 public key
    nonce     12
    ciphertext clen
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import struct
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.ids import DeviceId, SessionId, Sha256Hex

MAGIC = b"RAEC"
VERSION = 1
_PREFIX = struct.Struct(">4sB8sHI")
_EPK_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_HKDF_INFO = b"room-audio chunk envelope v1"
MAX_HEADER_BYTES = 4096

Codec = Literal["flac", "opus"]


class EnvelopeError(ValueError):
    """A sealed chunk that cannot be trusted; the message says why, without content."""


class TruncatedEnvelope(EnvelopeError):
    pass


class UnknownVersion(EnvelopeError):
    pass


class MalformedEnvelope(EnvelopeError):
    pass


class TamperedEnvelope(EnvelopeError):
    pass


class WrongKey(EnvelopeError):
    pass


class ChunkHeader(BaseModel):
    """What the gateway may know about a chunk before (and without) decrypting it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: DeviceId
    session_id: SessionId
    seq: int = Field(ge=0)
    codec: Codec
    sample_rate: int = Field(default=16_000, gt=0)
    start_s: float = Field(ge=0, description="offset of the chunk in the session, seconds")
    duration_s: float = Field(gt=0, description="audio length of the chunk, seconds")
    sha256: Sha256Hex = Field(description="sha256 of the plaintext (encoded audio)")


@dataclass(frozen=True)
class OpenedChunk:
    header: ChunkHeader
    audio: bytes


def seal_chunk(header: ChunkHeader, audio: bytes, recipient: X25519PublicKey) -> bytes:
    """Encrypt ``audio`` to ``recipient``; ``header.sha256`` must be the audio's digest."""
    if hashlib.sha256(audio).hexdigest() != header.sha256:
        raise ValueError("header.sha256 does not match the audio")
    header_bytes = _canonical(header)
    ephemeral = X25519PrivateKey.generate()
    epk = _raw_public(ephemeral.public_key())
    nonce = secrets.token_bytes(_NONCE_LEN)
    prefix = _PREFIX.pack(
        MAGIC, VERSION, key_id(recipient), len(header_bytes), len(audio) + _TAG_LEN
    )
    aad = prefix + header_bytes + epk + nonce
    key = _derive_key(ephemeral.exchange(recipient), epk, _raw_public(recipient))
    return aad + ChaCha20Poly1305(key).encrypt(nonce, audio, aad)


def read_header(blob: bytes) -> ChunkHeader:
    """Parse and check the framing and header without a key (not yet authenticated)."""
    return _parse(blob).header


def open_chunk(blob: bytes, private_key: X25519PrivateKey) -> OpenedChunk:
    """Decrypt and authenticate a sealed chunk; raises an EnvelopeError subclass."""
    parsed = _parse(blob)
    recipient = private_key.public_key()
    if parsed.key_id != key_id(recipient):
        raise WrongKey("chunk is sealed to another gateway key")
    key = _derive_key(
        private_key.exchange(X25519PublicKey.from_public_bytes(parsed.epk)),
        parsed.epk,
        _raw_public(recipient),
    )
    try:
        audio = ChaCha20Poly1305(key).decrypt(parsed.nonce, parsed.ciphertext, parsed.aad)
    except InvalidTag:
        raise TamperedEnvelope("chunk failed authentication (tampered or corrupt)") from None
    if hashlib.sha256(audio).hexdigest() != parsed.header.sha256:
        raise TamperedEnvelope("chunk audio does not match its header digest")
    return OpenedChunk(parsed.header, audio)


def key_id(public_key: X25519PublicKey) -> bytes:
    return hashlib.sha256(_raw_public(public_key)).digest()[:8]


def key_fingerprint(public_key: X25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw public key: what a device compares with the gateway's
    (the envelope's key_id is its first 8 bytes)."""
    return "sha256:" + hashlib.sha256(_raw_public(public_key)).hexdigest()


def generate_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def private_key_to_pem(private_key: X25519PrivateKey) -> bytes:
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> X25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise EnvelopeError("not a PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise EnvelopeError("not an X25519 private key")
    return key


def public_key_to_text(public_key: X25519PublicKey) -> str:
    """The form a technician copies into the agent's config: base64 of the 32 raw bytes."""
    return base64.b64encode(_raw_public(public_key)).decode("ascii")


def public_key_from_text(text: str) -> X25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("public key is not base64") from None
    if len(raw) != _EPK_LEN:
        raise EnvelopeError(f"public key must be {_EPK_LEN} bytes (got {len(raw)})")
    return X25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class _Parsed:
    key_id: bytes
    header: ChunkHeader
    epk: bytes
    nonce: bytes
    aad: bytes
    ciphertext: bytes


def _parse(blob: bytes) -> _Parsed:
    if len(blob) < _PREFIX.size:
        raise TruncatedEnvelope(f"chunk is {len(blob)} bytes, shorter than its framing")
    magic, version, kid, hlen, clen = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise MalformedEnvelope("not a sealed chunk (bad magic)")
    if version != VERSION:
        raise UnknownVersion(f"unsupported envelope version {version} (this build reads {VERSION})")
    if hlen > MAX_HEADER_BYTES:
        raise MalformedEnvelope(f"header length {hlen} exceeds {MAX_HEADER_BYTES}")
    if clen < _TAG_LEN:
        raise MalformedEnvelope("ciphertext shorter than its tag")
    header_end = _PREFIX.size + hlen
    cipher_start = header_end + _EPK_LEN + _NONCE_LEN
    expected = cipher_start + clen
    if len(blob) < expected:
        raise TruncatedEnvelope(f"chunk is {len(blob)} bytes, framing says {expected}")
    if len(blob) > expected:
        raise MalformedEnvelope(f"chunk has {len(blob) - expected} trailing bytes")
    try:
        header = ChunkHeader.model_validate_json(blob[_PREFIX.size : header_end])
    except ValidationError as exc:
        raise MalformedEnvelope(f"invalid chunk header: {_first_error(exc)}") from None
    return _Parsed(
        key_id=kid,
        header=header,
        epk=blob[header_end : header_end + _EPK_LEN],
        nonce=blob[header_end + _EPK_LEN : cipher_start],
        aad=blob[:cipher_start],
        ciphertext=blob[cipher_start:],
    )


def _canonical(header: ChunkHeader) -> bytes:
    return json.dumps(header.model_dump(), sort_keys=True, separators=(",", ":")).encode()


def _derive_key(shared: bytes, epk: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=epk + recipient, info=_HKDF_INFO).derive(
        shared
    )


def _raw_public(public_key: X25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in error["loc"]) or "header"
    return f"{where}: {error['msg']}"
