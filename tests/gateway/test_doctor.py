"""room-gateway doctor as an operator runs it: the store and the broker really reached.

Each problem is one line naming what and its fix, exit status 2, no traceback: a PostgreSQL
server that is not there, a store a newer gateway migrated, a broker without the shared
subscriptions replicas need (a stand-in broker: every broker installed here has them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store import Database, SqliteLocation, latest_version
from tests.gateway.conftest import ROOM_GATEWAY
from tests.support.mosquitto import GATEWAY_USER, Broker
from tests.support.postgres import PostgresServer
from tests.support.processes import free_port

SECRET = "doctor-mqtt-secret-never-printed"


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    done = subprocess.run(
        [ROOM_GATEWAY, "doctor"], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    assert "Traceback" not in done.stderr and SECRET not in done.stdout + done.stderr
    return done


def problems(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 2, done
    return [line.removeprefix("room-gateway: ") for line in done.stderr.splitlines()]


def test_a_postgresql_server_that_is_not_there_is_one_line_with_its_fix(tmp_path):
    port = free_port()
    env = {
        "ROOM_GATEWAY_STATE_DIR": str(tmp_path),
        "ROOM_GATEWAY_STORE__URL": f"postgresql://gateway@127.0.0.1:{port}/gateway",
    }
    [line] = problems(doctor(env))
    assert line.startswith(f"store: problem: postgresql://gateway@127.0.0.1:{port}/gateway:")
    assert "cannot connect" in line and "check that the server runs" in line


def test_a_store_migrated_by_a_newer_gateway_says_upgrade(tmp_path):
    db = Database.open(SqliteLocation(tmp_path / "gateway.db"))
    db.call(lambda conn: conn.execute("INSERT INTO schema_version (version) VALUES (999)"))
    db.close()
    [line] = problems(doctor({"ROOM_GATEWAY_STATE_DIR": str(tmp_path)}))
    assert line == (
        f"store: problem: {tmp_path}/gateway.db: schema version 999 is newer than this"
        f" gateway's ({latest_version()}): another replica runs a newer release; upgrade"
        " this one to it"
    )


def test_postgresql_and_a_broker_with_shared_subscriptions_are_ok(
    postgres: PostgresServer, tmp_path
):
    name = postgres.database()
    broker = Broker(tmp_path / "broker", users={GATEWAY_USER: SECRET}).start()
    (tmp_path / "mqtt-password").write_text(SECRET)
    try:
        env = {
            "ROOM_GATEWAY_STATE_DIR": str(tmp_path),
            "ROOM_GATEWAY_STORE__URL": postgres.url(name),
            "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(postgres.password_file(tmp_path)),
            "ROOM_GATEWAY_MQTT__BROKER_URL": broker.url,
        }
        done = doctor(env)
        assert (done.returncode, done.stderr) == (0, ""), done
        db_line = f"store: ok: {postgres.url(name)}: schema version 0, this gateway's is"
        assert done.stdout.splitlines() == [
            f"{db_line} {latest_version()} (serve migrates it on start)",
            f"broker: ok: {broker.url}: shared subscriptions available",
        ]
        (tmp_path / "mqtt-password").write_text("wrong")
        [line] = problems(doctor(env))
        assert line.startswith(f"broker: problem: {broker.url}: the broker refused the relay")
    finally:
        broker.stop()
        postgres.drop(name)


@pytest.fixture
def broker_without_sharing() -> Iterator[str]:
    """An MQTT 5 broker that says it has no shared subscriptions (CONNACK property
    SharedSubscriptionAvailable = 0) and refuses one (SUBACK 0x9E)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                while (packet := _read_packet(conn)) is not None:
                    kind, body = packet
                    if kind == 0x10:  # CONNECT
                        conn.sendall(bytes([0x20, 5, 0, 0, 2, 0x2A, 0]))
                    elif kind == 0x80:  # SUBSCRIBE: packet id, no properties, 0x9E
                        conn.sendall(bytes([0x90, 4, *body[:2], 0, 0x9E]))
                    elif kind == 0xE0:  # DISCONNECT
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"mqtt://127.0.0.1:{port}"
    thread.join(timeout=10)


def _read_packet(conn: socket.socket) -> tuple[int, bytes] | None:
    head = conn.recv(1)
    if not head:
        return None
    length, shift = 0, 0
    while True:
        byte = conn.recv(1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = conn.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0] & 0xF0, body


def test_a_broker_without_shared_subscriptions_is_one_line_with_its_fix(
    broker_without_sharing: str, tmp_path: Path
):
    env = {
        "ROOM_GATEWAY_STATE_DIR": str(tmp_path),
        "ROOM_GATEWAY_MQTT__BROKER_URL": broker_without_sharing,
        "ROOM_GATEWAY_MQTT__PASSWORD": SECRET,
        "ROOM_GATEWAY_MQTT__SHARED_SUBSCRIPTION": "true",
    }
    done = doctor(env)
    database = tmp_path / "gateway.db"
    assert done.stdout == f"store: ok: {database} does not exist yet (serve creates it)\n"
    [line] = problems(done)
    assert line.startswith(f"broker: problem: {broker_without_sharing}: no shared subscriptions")
    assert "shared_subscription = false" in line
