"""The gateway running on this host, as its admin CLI reaches it over HTTP.

Some questions only the running service can answer without harm. A room's device is
reached over MQTT, and the broker broker-config sets up makes every client's id its user
name: a CLI that logged in as the gateway's user would knock the running relay off (and a
replica's relay too, if it used the replica's user). So ``room ping|check|logs`` ask the
running gateway's API (which sends the command on its own connection and waits for the
answer), and ``doctor`` reads the running gateway's ``/readyz`` before it would connect.

The CLI authenticates with an admin token it creates in the store for the one command
(the store is what an admin CLI may already change) and deletes afterwards; leftovers of a
killed command are deleted an hour later by the next one. The service listens on plain
HTTP on ``http.host``:``http.port`` (TLS is the proxy's), reached here on loopback when it
listens on every address.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from gateway.partner import tokens
from gateway.settings import GatewaySettings
from gateway.store import Database

TOKEN_LABEL = "room-gateway cli (temporary)"
LEFTOVER_AFTER_S = 3600.0
CONNECT_TIMEOUT_S = 3.0
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class LocalGatewayError(Exception):
    """The running gateway could not be asked, or refused: one line for a person."""


def local_url(settings: GatewaySettings) -> str:
    host = WILDCARDS.get(settings.http.host, settings.http.host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http.port}"


@contextmanager
def operator_client(
    settings: GatewaySettings, db: Database, timeout_s: float
) -> Iterator[httpx.Client]:
    """An HTTP client for the running gateway, signed in with a token made for it."""
    with db.transaction() as conn:
        tokens.delete_labelled(conn, TOKEN_LABEL, time.time() - LEFTOVER_AFTER_S, "admin")
        info, token = tokens.create(conn, TOKEN_LABEL, "admin")
    try:
        with httpx.Client(
            base_url=local_url(settings),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        ) as client:
            yield client
    finally:
        with db.transaction() as conn:
            tokens.delete(conn, info.id, "admin")


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer, or LocalGatewayError naming what went wrong and what to do."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        raise LocalGatewayError(
            f"the gateway does not answer at {client.base_url} (is it running? systemctl"
            " status room-gateway; http.host and http.port name where it listens)"
        ) from None
    except httpx.TimeoutException:
        raise LocalGatewayError(
            f"the gateway at {client.base_url} did not answer in time"
        ) from None
    except httpx.HTTPError as exc:
        raise LocalGatewayError(f"{client.base_url}: {type(exc).__name__}") from None
    if response.is_success:
        return response.json()
    try:
        problem = response.json()
        detail, code = problem.get("detail"), problem.get("code")
    except ValueError:
        detail, code = None, None
    if not isinstance(detail, str) or not isinstance(code, str):
        raise LocalGatewayError(
            f"{client.base_url} answered HTTP {response.status_code}: is it room-gateway serve?"
        )
    raise LocalGatewayError(f"{detail} ({code})")


def running_readiness(settings: GatewaySettings) -> dict[str, Any] | None:
    """The running gateway's /readyz, or None when no gateway answers on this host."""
    try:
        response = httpx.get(
            f"{local_url(settings)}/readyz", timeout=httpx.Timeout(5.0, connect=1.0)
        )
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("checks"), dict):
        return None
    return body
