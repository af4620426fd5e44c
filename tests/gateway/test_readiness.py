"""/readyz: one entry per dependency, each judged on its own (gateway/readiness.py)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.gateway.conftest import GatewayProcess, SimulatorProcess
from tests.support.processes import free_port


def test_readyz_reports_a_down_broker_and_an_unreachable_blueprint(tmp_path: Path) -> None:
    dead = free_port()
    gateway = GatewayProcess(
        tmp_path / "gateway",
        f"http://127.0.0.1:{dead}",
        {
            "ROOM_GATEWAY_MQTT__BROKER_URL": f"mqtt://127.0.0.1:{dead}",
            "ROOM_GATEWAY_MQTT__PASSWORD": "not-used",
        },
    ).start()
    try:
        answer = httpx.get(f"{gateway.url}/readyz", timeout=20)
        body = answer.json()
        # The gateway still takes audio and queues its work: degraded, not out of rotation.
        assert answer.status_code == 200, body
        assert body["status"] == "degraded"
        checks = body["checks"]
        assert set(checks) >= {"database", "job_worker", "disk", "broker", "blueprint"}
        assert checks["database"]["status"] == "ok" and checks["database"]["critical"]
        assert checks["job_worker"]["status"] == "ok"
        assert checks["disk"]["status"] == "ok"
        assert checks["broker"]["status"] == "failing"
        assert not checks["broker"]["critical"]
        assert f"127.0.0.1:{dead}" in checks["broker"]["detail"]
        assert checks["blueprint"]["status"] == "failing"
        assert "unreachable" in checks["blueprint"]["detail"]
        assert checks["sealing_key"]["status"] == "failing"  # no keygen yet
        assert any(line.startswith("broker: ") for line in body["problems"])
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'gateway_dependency_up{dependency="broker"} 0.0' in metrics
        assert 'gateway_dependency_up{dependency="database"} 1.0' in metrics
    finally:
        gateway.stop()


def test_readyz_is_ok_when_every_dependency_answers(
    tmp_path: Path, blueprint_sim: SimulatorProcess
) -> None:
    gateway = GatewayProcess(tmp_path / "gateway", blueprint_sim.url, {})
    gateway.cli("keygen")
    gateway.start()
    try:
        body = httpx.get(f"{gateway.url}/readyz", timeout=20).json()
        assert body["status"] == "ok", body
        assert body["checks"]["blueprint"]["status"] == "ok"
        assert body["checks"]["broker"]["status"] == "not_configured"
        assert body["checks"]["sealing_key"]["detail"].startswith("sha256:")
        assert body["problems"] == []
    finally:
        gateway.stop()
