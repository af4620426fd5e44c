"""The HTTPS audio path, device -> gateway: sealed chunks, then the session's manifest.

The device authenticates with ``Authorization: Bearer <ingest token>`` (or its mTLS
identity). What each answer means to the device's uplink:

- 200 ``ChunkReceipt``: durably stored (or an identical repeat): the chunk may be deleted.
- 409: a different chunk is stored under this seq; keep ours and report it, never delete.
- 422: the gateway cannot open the chunk (corrupt or tampered): quarantine it locally.
- 401/403: unknown, revoked or foreign device: keep everything, retry slowly.
  The gateway's refusals are RFC 9457 problem details whose ``code`` says which
  (:data:`DEVICE_AUTH_CODES`); a 401/403 without one is not the gateway's (a proxy, a
  firewall, another server at that address) and must not be read as a revocation.
- 413: over the gateway's size limit: keep it and report.
- 429 ``unclaimed_quota``: the device has as many sessions no partner started at the
  gateway as it may; keep everything, report it, retry with backoff (the operator frees
  places with ``room-gateway device unclaimed ROOM --delete ID``).
- 5xx or no answer: retry with backoff.

The manifest is POSTed once every chunk of a closed session has been acknowledged; the
gateway assembles the session when it holds every chunk the manifest lists.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import SessionId, Sha256Hex

SEALED_CHUNK_CONTENT_TYPE = "application/vnd.room-audio.sealed-chunk"
CHUNK_PATH = "/v1/devices/{device_id}/sessions/{session_id}/chunks/{seq}"
CLOSE_PATH = "/v1/devices/{device_id}/sessions/{session_id}/close"
# What the device asks before it records: is the key it seals to the gateway's?
SEALING_KEY_PATH = "/v1/devices/{device_id}/sealing-key"
PROBLEM_MEDIA_TYPE = "application/problem+json"
# The gateway's own answers when it refuses a device's credentials (gateway/api/errors.py).
DEVICE_AUTH_CODES = frozenset(
    {"missing_token", "device_unauthenticated", "device_forbidden", "device_revoked"}
)
_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


def chunk_path(device_id: str, session_id: str, seq: int) -> str:
    return CHUNK_PATH.format(device_id=device_id, session_id=session_id, seq=seq)


def close_path(device_id: str, session_id: str) -> str:
    return CLOSE_PATH.format(device_id=device_id, session_id=session_id)


def sealing_key_path(device_id: str) -> str:
    return SEALING_KEY_PATH.format(device_id=device_id)


def problem_code(content_type: str | None, body: bytes) -> str | None:
    """The stable ``code`` of a gateway's problem+json answer; None for anything else (a
    proxy's HTML page, an empty body, another server's JSON)."""
    if (content_type or "").split(";")[0].strip().lower() != PROBLEM_MEDIA_TYPE:
        return None
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) and _CODE.match(code) else None


class ChunkReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    seq: int = Field(ge=0)
    sha256: Sha256Hex = Field(description="sha256 of the sealed bytes as stored")
    duplicate: bool = Field(description="an identical chunk was already stored")


class CloseReceipt(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: SessionId
    complete: bool = Field(description="every chunk in the manifest is stored")
    missing: list[int] = Field(default_factory=list, description="seqs not yet received")
    state: Literal["waiting_for_chunks", "assembling", "assembled"]


class SealingKeyInfo(BaseModel):
    """The gateway's sealing key, as a device checks its own configured one against it."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$", description="sha256 of the raw X25519 public key"
    )
    public_key: str = Field(max_length=64, description="base64, as gateway_public_key has it")
