"""Is the key this device seals to the gateway's? Asked before anything is recorded.

A wrong ``gateway_public_key`` is otherwise invisible on the device: the settings load, the
token is accepted, and every chunk is then refused (422 wrong_key) and quarantined, audio
nobody can open. The gateway therefore publishes its key's fingerprint to each device
(``GET /v1/devices/<id>/sealing-key``, with the device's own token; protocol/ingest.py),
and the agent compares it with its own:

- at start, before it resumes a session or takes a command (one try, short timeout);
- then every ``RECHECK_S`` (a gateway's key can be replaced), and every ``retry_s`` while
  the answer is not known yet (gateway unreachable: recording goes on meanwhile, because
  a clinician's session must not wait for the network; the spool keeps it);
- at once when the uplink hears ``wrong_key`` for a chunk, and on ``recheck()`` (SIGHUP).

While the verdict is ``mismatch`` the agent refuses to start recording, with the reason in
its state. Fingerprints are of public keys: they may be shown and logged.
"""

from __future__ import annotations

import logging

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from pydantic import BaseModel, ValidationError

from agent.periodic import PeriodicCheck
from protocol.envelope import key_fingerprint
from protocol.ingest import SealingKeyInfo, problem_code, sealing_key_path
from protocol.messages import DeviceReason, SealingKeyState

log = logging.getLogger(__name__)

RECHECK_S = 600.0
START_TIMEOUT_S = 5.0
MISMATCH = DeviceReason.SEALING_KEY_MISMATCH  # the device state's reason while it lasts


class KeyCheck(BaseModel):
    """One comparison: the verdict, both fingerprints, why it is not known (a code)."""

    state: SealingKeyState
    device_fingerprint: str
    gateway_fingerprint: str | None = None
    gateway_public_key: str | None = None
    error: str | None = None


def check_key(
    client: httpx.Client,
    device_id: str,
    configured: X25519PublicKey,
    timeout: float | None = None,
    headers: dict[str, str] | None = None,
) -> KeyCheck:
    """Ask the gateway once; never raises for a network or protocol problem."""
    mine = key_fingerprint(configured)
    try:
        answer = client.get(
            sealing_key_path(device_id), timeout=timeout or client.timeout, headers=headers
        )
    except httpx.HTTPError:
        return KeyCheck(state="unverified", device_fingerprint=mine, error="gateway_unreachable")
    if not answer.is_success:
        code = problem_code(answer.headers.get("content-type"), answer.content)
        error = code or f"http_{answer.status_code}"
        return KeyCheck(state="unverified", device_fingerprint=mine, error=error)
    try:
        info = SealingKeyInfo.model_validate_json(answer.content)
    except ValidationError:
        return KeyCheck(state="unverified", device_fingerprint=mine, error="not_a_key_answer")
    return KeyCheck(
        state="verified" if info.fingerprint == mine else "mismatch",
        device_fingerprint=mine,
        gateway_fingerprint=info.fingerprint,
        gateway_public_key=info.public_key,
    )


class SealingKeyWatch(PeriodicCheck):
    """The running agent's verdict, kept current by a thread of its own."""

    name = "key-check"

    def __init__(
        self,
        client: httpx.Client,
        device_id: str,
        configured: X25519PublicKey,
        retry_s: float,
    ) -> None:
        super().__init__()
        self.client = client
        self.device_id = device_id
        self.configured = configured
        self.retry_s = retry_s
        self._last = KeyCheck(state="unverified", device_fingerprint=key_fingerprint(configured))

    @property
    def last(self) -> KeyCheck:
        with self._lock:
            return self._last

    @property
    def state(self) -> SealingKeyState:
        return self.last.state

    def check_now(self, timeout: float | None = START_TIMEOUT_S) -> KeyCheck:
        """One check on the caller's thread (at start: before any recording)."""
        found = check_key(self.client, self.device_id, self.configured, timeout)
        self._record(found)
        return found

    def interval(self) -> float:
        return RECHECK_S if self.state != "unverified" else self.retry_s

    def run_check(self) -> None:
        self._record(check_key(self.client, self.device_id, self.configured))

    def _record(self, found: KeyCheck) -> None:
        with self._lock:
            before, self._last = self._last, found
        if found.state == before.state and found.gateway_fingerprint == before.gateway_fingerprint:
            return
        if found.state == "mismatch":
            log.error(
                "key check: this device seals to %s, the gateway's key is %s: recording is"
                " refused until agent.gateway_public_key is the gateway's",
                found.device_fingerprint,
                found.gateway_fingerprint,
            )
        elif found.state == "verified":
            log.info(
                "key check: the gateway's sealing key is this device's (%s)",
                found.gateway_fingerprint,
            )
        else:
            log.warning("key check: not verified yet (%s); recording is allowed", found.error)
        self.changed()
