"""One `serve` per SQLite file, any number on PostgreSQL: real processes on one store.

A second `serve` on a SQLite file someone serves refuses with one line naming the first
(its pid); once the first is SIGKILLed (no cleanup runs) a new one starts at once: the
lock is the kernel's and dies with its process. On PostgreSQL two replicas serve together.
"""

from __future__ import annotations

import subprocess

from tests.gateway.conftest import ROOM_GATEWAY, GatewayProcess, SimulatorProcess
from tests.support.postgres import PostgresServer


def test_a_second_serve_on_one_sqlite_file_refuses_naming_the_first(
    blueprint_sim: SimulatorProcess, tmp_path
):
    first = GatewayProcess(tmp_path / "state", blueprint_sim.url, {}).start()
    try:
        assert first.service is not None
        second = first.replica("second")
        refused = subprocess.run(
            [ROOM_GATEWAY, "serve"],
            env=second._clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        database = tmp_path / "state" / "gateway.db"
        assert lines[0].startswith(f"room-gateway: {database} is already served by pid ")
        assert f"pid {first.service.pid} " in lines[0]
        assert "PostgreSQL" in lines[0] and "Traceback" not in refused.stderr

        first.kill()  # SIGKILL: nothing removes the lock file
        assert (tmp_path / "state" / "gateway.db.lock").exists()
        second.start()  # the kernel dropped the dead process's lock
        assert second.http.get("/healthz").status_code == 200
        second.stop()
    finally:
        first.stop()


def test_replicas_on_postgresql_serve_side_by_side(
    blueprint_sim: SimulatorProcess, postgres: PostgresServer, tmp_path
):
    name = postgres.database()
    state = tmp_path / "state"
    state.mkdir()
    env = {
        "ROOM_GATEWAY_STORE__URL": postgres.url(name),
        "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(postgres.password_file(state)),
        "ROOM_GATEWAY_REPLICA": "a",
    }
    first = GatewayProcess(state, blueprint_sim.url, env).start()
    second = first.replica("b")
    try:
        second.start()
        for replica in (first, second):
            assert replica.http.get("/readyz").status_code == 200, replica.log()
    finally:
        second.stop()
        first.stop()
        postgres.drop(name)
