"""X-Blueprint-Signature: HMAC-SHA256 of the exact raw body, keyed with the client secret.

Blueprint sends lowercase hex with no prefix. Verification works on the raw bytes as
received (re-serialised JSON would differ by a space and fail) and compares in constant
time, so response timing reveals nothing about the expected signature.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Blueprint-Signature"


def sign(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    if not signature:
        return False
    expected = sign(body, secret).encode("ascii")
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header is attacker input.
    return hmac.compare_digest(expected, signature.strip().encode("utf-8", "replace"))
