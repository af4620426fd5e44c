"""The relay with replicas: two `room-gateway serve` on one PostgreSQL and one mosquitto
(run from the files broker-config wrote), each with its own MQTT client id.

Device events reach the gateways through ``$share/gateway/...``: each is handled once,
also after one replica is SIGKILLed (its session is not kept, so the broker hands the
whole stream to the living one rather than hoarding a share for the dead). A room state
the device retained before any gateway ran is recovered although shared subscriptions get
no retained messages. Commands are published by whichever replica runs the job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path
from tests.gateway.conftest import GatewayProcess, SimulatorProcess, StoreEnv, steps
from tests.gateway.deployment import Deployment, tone
from tests.gateway.relay.test_relay import FakeDevice, command, wait_for_step
from tests.support.eventually import eventually

ROOMS = ("room-1", "room-2")
pytestmark = [
    pytest.mark.parametrize("engine", ["postgresql"], indirect=True, scope="module"),
    pytest.mark.timeout(180),
]


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess, store_env: StoreEnv
) -> Iterator[tuple[Deployment, GatewayProcess]]:
    """Replica a (the deployment's gateway) and replica b; the broker started first, so a
    device can retain its state before any gateway runs."""
    root = tmp_path_factory.mktemp("replicas")
    deployment = Deployment(
        root,
        blueprint_sim.url,
        ROOMS,
        None,  # no TLS
        None,  # devices reach replica a directly
        ("a", "b"),
        **store_env(root / "gateway"),
        ROOM_GATEWAY_REPLICA="a",
    )
    second = deployment.gateway.replica("b")
    deployment.broker.start()
    yield deployment, second
    second.stop()
    deployment.stop()


def room(gateway: GatewayProcess, room_id: str) -> dict:
    return gateway.http.get(f"/v1/rooms/{room_id}").json()


def count(gateway: GatewayProcess, session_id: str, step: str) -> int:
    return steps(gateway.session(session_id)).count(step)


def test_replicas_share_the_rooms_messages_once_each(
    replicas: tuple[Deployment, GatewayProcess], sim: SimulatorProcess
) -> None:
    deployment, b = replicas
    a = deployment.gateway
    device = FakeDevice(deployment, "room-1").connect()
    device.answer = lambda body: (True, None)
    device.state(recorder="idle", backlog_chunks=7, version="t")  # retained, nobody listens
    a.start()
    b.start()
    for replica in (a, b):  # the retained state reached the store although shared
        eventually(
            lambda: room(replica, "room-1")["backlog_chunks"] == 7,  # noqa: B023
            timeout=15,
            what="state",
        )
    log = deployment.broker.log()
    assert "gateway-a" in log and "gateway-b" in log  # two client ids, both connected
    for replica in (a, b):
        assert "gateway_mqtt_connected 1.0" in replica.http.get("/metrics").text

    sim.set_callback(a.webhook_url)
    a.put_people("clin-rep", "client-rep")
    session_id = a.start_session("room-1", "clin-rep", "client-rep")  # via replica a
    device.wait_for(command("start"))
    started = json.dumps({"type": "session_started", "session_id": session_id})
    for _ in range(20):
        device.publish("events", started)
    eventually(lambda: count(a, session_id, "device_recording") >= 20, timeout=15, what="events")
    marker = json.dumps({"type": "session_started", "session_id": session_id, "resumed": True})
    device.publish("events", marker)  # sent last: once it is in, all the others are
    eventually(
        lambda: "resumed" in json.dumps(a.session(session_id)["timeline"]),
        timeout=15,
        what="the marker",
    )
    assert count(a, session_id, "device_recording") == 21, "each event handled once"

    assert b.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200  # via b
    device.wait_for(command("stop"))
    wait_for_step(deployment, session_id, "stop_confirmed")

    a.kill()  # SIGKILL: its MQTT session ends with it, nothing is kept for it
    for _ in range(10):
        device.publish("events", started)
    eventually(
        lambda: count(b, session_id, "device_recording") >= 31, timeout=15, what="after the kill"
    )
    device.publish("events", marker)
    eventually(
        lambda: json.dumps(b.session(session_id)["timeline"]).count("resumed") == 2,
        timeout=15,
        what="the second marker",
    )
    assert count(b, session_id, "device_recording") == 32, "none lost, none doubled"
    device.disconnect()


def test_one_sessions_chunks_taken_by_both_replicas_at_once_are_all_accepted(
    replicas: tuple[Deployment, GatewayProcess], sim: SimulatorProcess
) -> None:
    """Sixteen clients at once, alternating replicas, into one session: on SERIALIZABLE alone
    nearly every pair of inserts conflicted and retries ran out (503); now the session's
    chunks take turns (an advisory lock), each accepted at the first try."""
    deployment, b = replicas
    a = deployment.gateway
    for replica in (a, b):
        if not (replica.service and replica.service.alive()):
            replica.start()
    sim.set_callback(a.webhook_url)
    a.put_people("clin-rep2", "client-rep2")
    session_id = a.start_session("room-2", "clin-rep2", "client-rep2")
    chunks = [deployment.seal("room-2", session_id, seq, tone(0.3, seed=seq)) for seq in range(96)]
    headers = {
        "Authorization": f"Bearer {deployment.devices['room-2'].token}",
        "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
    }

    def send(worker: int) -> list[int]:
        statuses = []
        with httpx.Client(headers=headers, timeout=30) as http:
            for chunk in chunks[worker::16]:
                target = (a, b)[chunk.seq % 2].url
                url = target + chunk_path("room-2", session_id, chunk.seq)
                statuses.append(http.put(url, content=chunk.blob).status_code)
        return statuses

    with ThreadPoolExecutor(16) as pool:
        statuses = [status for batch in pool.map(send, range(16)) for status in batch]
    assert statuses == [200] * len(chunks), sorted(set(statuses))
    stored = a.query("SELECT COUNT(*) FROM chunks WHERE session_id = ?", session_id)[0][0]
    assert stored == len(chunks)
