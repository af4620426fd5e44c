"""The gateway's log is for what happened, not for every request: no access line per poll
by default (a partner polls /v1/rooms ten times a second), one per request on request."""

import socket

import httpx
import pytest

from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE
from tests.gateway.conftest import PARTNER_TOKEN, GatewayProcess
from tests.support.eventually import eventually

pytestmark = pytest.mark.timeout(60)


def polled_log(tmp_path, **env: str) -> str:
    """The log after a burst of polls, up to a sentinel: a refused ingest request, which
    the gateway always logs (after the polls, so they had their chance to be logged)."""
    gateway = GatewayProcess(tmp_path / "gateway", "http://127.0.0.1:9", env)
    gateway.start()
    try:
        for _ in range(20):
            assert gateway.http.get("/v1/rooms").status_code == 200
        sentinel = httpx.put(f"{gateway.url}/v1/devices/room-1/sessions/s-1/chunks/0")
        assert sentinel.status_code == 401

        def refusal_logged() -> bool:
            log = gateway.log()
            assert "ingest: device room-1 refused" in log, log
            return True

        eventually(refusal_logged, what="the sentinel's refusal in the log")
    finally:
        gateway.stop()
    return gateway.log()


def test_no_access_lines_by_default(tmp_path):
    log = polled_log(tmp_path)
    assert "GET /v1/rooms" not in log
    assert "ingest: device room-1 refused (401 missing_token)" in log


def test_access_lines_on_request(tmp_path):
    log = polled_log(tmp_path, ROOM_GATEWAY_HTTP__ACCESS_LOG="true")
    assert log.count('GET /v1/rooms HTTP/1.1" 200') == 20


def half_sent(port: int, request_line: str, headers: dict[str, str]) -> None:
    """A request whose body is promised (Content-Length) but never all sent: the client
    closes the connection after a few bytes."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"{request_line}\r\nHost: x\r\n{head}Content-Length: 100000\r\n\r\n".encode())
        sock.sendall(b"{" * 10)


def test_a_client_gone_before_its_body_is_one_info_line(tmp_path):
    """Issue 10: a client that promises a body and closes the connection before sending it
    (webhook, device chunk, partner JSON) is one INFO line each, never an ERROR traceback."""
    gateway = GatewayProcess(
        tmp_path / "gateway",
        "http://127.0.0.1:9",
        {"ROOM_GATEWAY_DEVICES__GATEWAY_URL": "http://127.0.0.1:9"},
    )
    gateway.cli("keygen")
    gateway.cli("device", "add", "room-1", "--out", str(tmp_path / "room-1"))
    device_token = (tmp_path / "room-1" / "ingest-token").read_text().strip()
    gateway.start()
    try:
        partner = {"Authorization": f"Bearer {PARTNER_TOKEN}"}
        cut = {
            "POST /v1/webhooks/blueprint HTTP/1.1": {"Content-Type": "application/json"},
            "PUT /v1/devices/room-1/sessions/s-1/chunks/0 HTTP/1.1": {
                "Authorization": f"Bearer {device_token}",
                "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
            },
            "PUT /v1/clinicians/c-1 HTTP/1.1": {**partner, "Content-Type": "application/json"},
        }
        for request_line, headers in cut.items():
            half_sent(gateway.port, request_line, headers)
            path = request_line.split()[1]
            eventually(lambda: path in gateway.log(), what=f"a line about {path}")  # noqa: B023
        sentinel = httpx.put(f"{gateway.url}/v1/devices/room-1/sessions/s-1/chunks/0")
        assert sentinel.status_code == 401
        eventually(lambda: "refused (401 missing_token)" in gateway.log(), what="the sentinel")
    finally:
        gateway.stop()
    log = gateway.log()
    assert "Traceback" not in log and " ERROR " not in log, log
    for request_line in cut:
        method, path, _ = request_line.split()
        # (the sentinel's own refusal names the chunk path too)
        lines = [line for line in log.splitlines() if path in line and "missing_token" not in line]
        assert len(lines) == 1 and " INFO " in lines[0], (path, lines)
        assert f"{method} {path}: client disconnected" in lines[0], lines
