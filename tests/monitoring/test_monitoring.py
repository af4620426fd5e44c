"""The alert rules and the Grafana dashboard shipped in monitoring/ are valid and use only
metrics a real gateway's /metrics has: per-room gauges (online, recording, backlog bytes and
chunks, last heartbeat age, microphone) and sessions by state."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.relay import room_status
from gateway.store import Database
from protocol.messages import DeviceState, Heartbeat
from tests.gateway.conftest import GatewayProcess

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "alerts.yml"
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
METRIC = re.compile(r"\b(gateway_[a-z_]+)\b")
PER_ROOM = (
    "gateway_room_online",
    "gateway_room_recording",
    "gateway_room_backlog_bytes",
    "gateway_room_backlog_chunks",
    "gateway_room_heartbeat_age_seconds",
    "gateway_room_microphone_ok",
)


def test_the_alert_rules_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: scripts/setup-system.sh installs prometheus"
    done = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 8 rules found" in done.stdout


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    found += re.findall(r"^\s+expr: (.+)$", RULES.read_text(), re.M)
    return found


@pytest.fixture
def gateway(tmp_path):
    gateway = GatewayProcess(tmp_path / "gateway", "http://127.0.0.1:9", {})
    gateway.cli("room", "add", "room-1", "room-2")
    gateway.start()
    yield gateway
    gateway.stop()


def test_metrics_has_each_room_and_every_metric_the_rules_and_dashboard_use(gateway):
    db = Database.open(gateway.store_location)
    try:
        with db.transaction() as conn:  # what the relay records from the devices' messages
            room_status.record_state(
                conn,
                "room-1",
                DeviceState(
                    device_id="room-1",
                    online=True,
                    recorder="recording",
                    session_id="s-1",
                    backlog_chunks=3,
                    backlog_bytes=123_456,
                    microphone="ok",
                ),
            )
            room_status.record_heartbeat(
                conn,
                "room-1",
                Heartbeat(
                    backlog_chunks=3,
                    backlog_bytes=123_456,
                    spool_free_bytes=10**9,
                    overruns=0,
                    dropped_s=0.0,
                    uptime_s=5.0,
                    version="t",
                    microphone="ok",
                ),
            )
            room_status.record_state(
                conn,
                "room-2",
                DeviceState(
                    device_id="room-2", online=False, recorder="idle", microphone="missing"
                ),
            )
    finally:
        db.close()
    # A counter shows once counted: a refused device request counts one.
    assert httpx.put(f"{gateway.url}/v1/devices/room-1/sessions/s-1/chunks/0").status_code == 401
    text = httpx.get(f"{gateway.url}/metrics").text
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['gateway_room_online{room="room-1"}'] == 1
    assert values['gateway_room_online{room="room-2"}'] == 0
    assert values['gateway_room_recording{room="room-1"}'] == 1
    assert values['gateway_room_backlog_bytes{room="room-1"}'] == 123_456
    assert values['gateway_room_backlog_chunks{room="room-1"}'] == 3
    assert 0 <= values['gateway_room_heartbeat_age_seconds{room="room-1"}'] < 60
    assert 'gateway_room_heartbeat_age_seconds{room="room-2"}' not in values, "never sent one"
    assert values['gateway_room_microphone_ok{room="room-1"}'] == 1
    assert values['gateway_room_microphone_ok{room="room-2"}'] == 0
    assert values['gateway_sessions{state="failed"}'] == 0
    assert values['gateway_sessions{state="recording"}'] == 0
    exported = {name.split("{")[0] for name in values}
    used = {name for expr in expressions() for name in METRIC.findall(expr)}
    assert set(PER_ROOM) <= used and "gateway_sessions" in used
    assert used <= exported, f"not in /metrics: {sorted(used - exported)}"
    assert "s-1" not in text, "no session id in the metrics"
