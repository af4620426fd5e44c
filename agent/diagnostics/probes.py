"""Can this device reach its broker and its gateway, and do they accept its credentials?

`room-agent status` and `doctor` ask from the device itself, with short timeouts, so the
answer holds for the network path the agent uses. Each probe returns a model of codes and
short reasons (never a secret) and never raises for a network problem.

- broker: TCP connect; for mqtts:// a TLS handshake verified as the agent verifies it;
  then, if the device has credentials, an MQTT 5 CONNECT with them, which proves the
  password (or client certificate). The CONNECT uses a client id of its own
  (``<device>-status-<pid>``), clean start, no session kept and no will: the broker never
  confuses it with the running agent (the same client id would kick the agent off).
- gateway: ``GET /healthz`` (is it there at all), then, with the ingest token, a ``PUT`` of
  an empty body with a content type the gateway refuses. The gateway checks the token
  before anything else and the content type before reading or storing anything, so the
  answer is 401 (unknown token), 403 (revoked, or another device's token) or 415 (token
  accepted) with no side effect: no chunk, no session, nothing stored. Its refusals are
  problem+json with a code; a 401/403 without one is something else's (a proxy, a
  firewall, another server at that address), and is said so, not called a revocation.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Literal

import httpx
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel

from agent.link.key_check import KeyCheck, check_key
from agent.settings import LinkSettings, MqttSettings
from protocol.ingest import DEVICE_AUTH_CODES, chunk_path, problem_code
from runtime.mqtt import broker_address, new_client, tls_context
from runtime.tls import trusting
from runtime.version import VERSION

TIMEOUT_S = 3.0
PROBE_SESSION = "status-probe"
PROBE_CONTENT_TYPE = "application/x-room-agent-probe"
TokenVerdict = Literal[
    "accepted", "refused", "forbidden", "revoked", "not_gateway", "not_checked", "unexpected"
]
ConnectVerdict = Literal["accepted", "refused", "no_answer", "not_checked"]


class BrokerProbe(BaseModel):
    url: str
    host: str
    port: int
    tls: bool
    reachable: bool
    connect: ConnectVerdict = "not_checked"
    error: str | None = None  # why not reachable, or why CONNECT was refused


class GatewayProbe(BaseModel):
    url: str
    reachable: bool
    healthz: int | None = None  # HTTP status of GET /healthz
    token: TokenVerdict = "not_checked"
    token_status: int | None = None  # HTTP status of the token probe
    token_code: str | None = None  # the gateway's problem code in that answer, if any
    error: str | None = None
    key: KeyCheck | None = None  # is gateway_public_key the gateway's? (with the token)


def probe_broker(settings: MqttSettings, device_id: str, timeout: float = TIMEOUT_S) -> BrokerProbe:
    host, port, tls = broker_address(settings.broker_url)
    found = BrokerProbe(url=settings.broker_url, host=host, port=port, tls=tls, reachable=False)
    try:
        with socket.create_connection((host, port), timeout) as sock:
            if tls:
                _handshake(settings, sock, host)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        found.error = network_error(exc, timeout)
        return found
    found.reachable = True
    if settings.password is None and settings.client_cert_file is None:
        return found  # nothing to prove
    found.connect, found.error = _mqtt_connect(settings, device_id, host, port, timeout)
    return found


def _handshake(settings: MqttSettings, sock: socket.socket, host: str) -> None:
    with tls_context(settings).wrap_socket(sock, server_hostname=host):
        pass


def _mqtt_connect(
    settings: MqttSettings, device_id: str, host: str, port: int, timeout: float
) -> tuple[ConnectVerdict, str | None]:
    """One CONNECT with the device's credentials under a client id of our own."""
    client_id = f"{device_id}-status-{os.getpid()}"[:64]
    client = new_client(settings, client_id, device_id, settings.password)
    client.connect_timeout = timeout
    answers: list[ReasonCode] = []

    def on_connect(
        c: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        code: ReasonCode,
        props: Properties | None,
    ) -> None:
        answers.append(code)

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=10, clean_start=True)
        deadline = time.monotonic() + timeout
        while not answers and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS:
                break
    except (OSError, ValueError) as exc:
        return "no_answer", network_error(exc, timeout)
    finally:
        client.disconnect()  # written at once: no network thread runs
        sock = client.socket()
        if sock is not None:
            sock.close()
    if not answers:
        return "no_answer", f"no CONNACK within {timeout:g} s"
    if answers[0].is_failure:
        return "refused", str(answers[0])
    return "accepted", None


def probe_gateway(
    settings: LinkSettings,
    device_id: str,
    sealing_key: X25519PublicKey | None = None,
    timeout: float = TIMEOUT_S,
) -> GatewayProbe:
    """``sealing_key``: the device's gateway_public_key, compared with the gateway's."""
    found = GatewayProbe(url=public_url(settings.gateway_url), reachable=False)
    try:
        with _client(settings, timeout) as client:
            found.healthz = client.get("/healthz").status_code
            found.reachable = True
            if settings.ingest_token is None:
                return found
            auth = {"Authorization": f"Bearer {settings.ingest_token.get_secret_value()}"}
            answer = client.put(
                chunk_path(device_id, PROBE_SESSION, 0),
                content=b"",
                headers={**auth, "Content-Type": PROBE_CONTENT_TYPE},
            )
            if sealing_key is not None and answer.status_code == 415:
                found.key = check_key(client, device_id, sealing_key, timeout, auth)
    except (httpx.HTTPError, OSError) as exc:
        found.error = network_error(exc, timeout)
        return found
    found.token_status = answer.status_code
    found.token_code = problem_code(answer.headers.get("content-type"), answer.content)
    found.token = token_verdict(answer.status_code, found.token_code)
    return found


def token_verdict(status: int, code: str | None) -> TokenVerdict:
    """What the answer to the token probe means (see the module docstring)."""
    if status == 415:
        return "accepted"
    if status in (401, 403) and code not in DEVICE_AUTH_CODES:
        return "not_gateway"
    if status == 401:
        return "refused"
    if status == 403:
        return "revoked" if code == "device_revoked" else "forbidden"
    return "unexpected"


def _client(settings: LinkSettings, timeout: float) -> httpx.Client:
    verify: ssl.SSLContext | bool = True
    if settings.ca_file is not None:
        verify = trusting(settings.ca_file)
    return httpx.Client(
        base_url=settings.gateway_url,
        timeout=timeout,
        verify=verify,
        headers={"User-Agent": f"room-agent/{VERSION} (status)"},
    )


def network_error(exc: BaseException, timeout: float) -> str:
    """A short reason a person can act on, from the innermost cause of ``exc``."""
    cause = exc
    while cause.__cause__ is not None or cause.__context__ is not None:
        cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
    for candidate in (exc, cause):
        if isinstance(candidate, ssl.SSLCertVerificationError):
            return f"TLS: {candidate.verify_message or 'certificate verify failed'}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or type(cause).__name__}"
    if isinstance(cause, socket.gaierror):
        return "name not resolved"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError | httpx.TimeoutException) or isinstance(
        exc, httpx.TimeoutException
    ):
        return f"no answer within {timeout:g} s"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return type(cause).__name__


def public_url(url: str) -> str:
    """The URL without any user:password@ part, for printing."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}{sep}{host.rpartition('@')[2]}{slash}{path}"
