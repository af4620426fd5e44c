"""The gateway's log is for what happened, not for every request: no access line per poll
by default (a partner polls /v1/rooms ten times a second), one per request on request."""

import time

import httpx
import pytest

from tests.gateway.conftest import GatewayProcess

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
        deadline = time.monotonic() + 10
        while "ingest: device room-1 refused" not in gateway.log():
            assert time.monotonic() < deadline, gateway.log()
            time.sleep(0.05)
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
