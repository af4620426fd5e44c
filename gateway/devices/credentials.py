"""A device's secrets: an HTTPS ingest token and an MQTT password, each shown once.

Both are 256 random bits. The ingest token is stored as its SHA-256 (nothing to brute
force, one indexed lookup per request). The MQTT password is stored as the hash mosquitto
reads from its ``password_file`` (PBKDF2-SHA512, mosquitto 2.0's ``$7$`` format), computed
here with hashlib so the gateway host needs no mosquitto installed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "rgd_"
MOSQUITTO_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes
MOSQUITTO_SALT_BYTES = 12
_SHA512_BYTES = 64


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def mosquitto_hash(password: str, salt: bytes | None = None) -> str:
    """``$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>``, as mosquitto_passwd."""
    salt = salt if salt is not None else secrets.token_bytes(MOSQUITTO_SALT_BYTES)
    digest = _pbkdf2(password, salt, MOSQUITTO_ITERATIONS)
    return f"$7${MOSQUITTO_ITERATIONS}${_b64(salt)}${_b64(digest)}"


def mosquitto_verify(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (tests and self-checks)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    return hmac.compare_digest(_pbkdf2(password, salt, iterations), expected)


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _SHA512_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
