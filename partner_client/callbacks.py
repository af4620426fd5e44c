"""Verifying the gateway's callback: signed the Standard Webhooks way.

Headers ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` (``v1,`` + base64
HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``); the key is the secret's bytes, or for a
``whsec_`` secret its base64 payload. Refuse a timestamp too far from now (replays), and
de-duplicate by ``webhook-id`` (a retry carries the same one).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from partner_client.models import Callback

TOLERANCE_S = 300


class CallbackError(Exception):
    """The callback is not signed with our secret, or too old: answer 401, do not act."""


def verify_callback(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> Callback:
    lowered = {key.lower(): value for key, value in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"].split()
    except (KeyError, ValueError):
        raise CallbackError("missing or malformed webhook-* headers") from None
    if abs((time.time() if now is None else now) - timestamp) > TOLERANCE_S:
        raise CallbackError("webhook-timestamp is too far from now")
    signed = f"{message_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()
    if not any(hmac.compare_digest(candidate, f"v1,{expected}") for candidate in signatures):
        raise CallbackError("webhook-signature does not match")
    return Callback.model_validate_json(body)


def _key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode("utf-8")
