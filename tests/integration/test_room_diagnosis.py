"""`room-gateway room ping|check|logs` and `doctor`, every part real: mosquitto from
broker-config's files, `room-gateway serve` with its relay, `room-agent run` capturing
through PortAudio from the ALSA file plugin.

The CLI goes through the running gateway (its API sends the command on the relay's own
connection and waits for the answer): logging in as the gateway's MQTT user itself would
knock the relay off, since the broker makes the client id the user name. So the relay's
connection is counted before and after. With two replicas sharing the rooms' messages the
device's answer reaches either one; each question is still answered to the one that asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.gateway.conftest import GatewayProcess, SimulatorProcess
from tests.gateway.deployment import Deployment
from tests.integration.test_lost_commands import watch
from tests.integration.test_room_to_blueprint import ROOM, STATE, start_agent
from tests.support.alsa import FifoFeeder
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ABSENT = "room-9"  # provisioned, its device never started
CONNECTED = "relay: connected to the broker"


def relay_connections(gateway: GatewayProcess) -> int:
    return gateway.log().count(CONNECTED)


@pytest.fixture
def deployment(tmp_path: Path, sim: SimulatorProcess) -> Iterator[Deployment]:
    deployed = Deployment(tmp_path / "site", sim.url, (ROOM, ABSENT)).start()
    yield deployed
    deployed.stop()


def test_ping_check_and_logs_reach_the_room_through_the_running_gateway(
    tmp_path: Path, deployment: Deployment, feeder: FifoFeeder, speech: np.ndarray
) -> None:
    gateway = deployment.gateway
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        with watch(deployment) as probe:
            probe.wait_for(probe.on(STATE, online=True), timeout=20)
        connected = relay_connections(gateway)
        assert connected == 1, gateway.log()

        ping = gateway.cli("room", "ping", ROOM)
        assert ping.stdout.startswith(f"{ROOM}: answered in "), ping.stdout
        assert float(ping.stdout.split()[3]) < 5000

        # The room talks while the device listens (no silence queued ahead of it).
        feeder.idle_silence = False
        feeder.play(np.tile(speech, 2))
        check = gateway.cli("room", "check", ROOM, "--seconds", "3", check=False)
        feeder.idle_silence = True
        assert check.returncode in (0, 1), check.stderr  # 1: a verdict other than good
        lines = dict(line.split(None, 1) for line in check.stdout.splitlines() if " " in line)
        assert float(lines["listened"].split()[0]) >= 2.9, lines
        assert "dBFS RMS" in lines["level"] and "noise" in lines and "verdict" in lines
        assert float(check.stdout.split("speech share")[1].split("%")[0]) > 0

        logs = gateway.cli("room", "logs", ROOM, "--since", "10m")
        assert "connected to the broker" in logs.stdout, logs.stdout
        assert " INFO " in logs.stdout and "agent.link" in logs.stdout
        password = deployment.devices[ROOM].password
        assert password not in logs.stdout and deployment.devices[ROOM].token not in logs.stdout

        doctor = gateway.cli("doctor")
        assert "broker: ok:" in doctor.stdout and "running gateway's relay" in doctor.stdout

        absent = gateway.cli("room", "ping", ABSENT, "--timeout", "1", check=False)
        assert absent.returncode == 2
        assert f"room {ABSENT} did not answer within 1 s" in absent.stderr, absent.stderr
        assert "never seen" in absent.stderr and "room_no_answer" in absent.stderr
        unknown = gateway.cli("room", "ping", "room-404", check=False)
        assert unknown.returncode == 2 and "room_not_found" in unknown.stderr, unknown.stderr
        bad = gateway.cli("room", "logs", ROOM, "--since", "ten", check=False)
        assert bad.returncode == 2 and "--since" in bad.stderr

        # Nothing of the relay was knocked off, and no token of the CLI is left behind.
        assert relay_connections(gateway) == connected, gateway.log()
        assert "disconnected from the broker" not in gateway.log()
        assert gateway.cli("admin-token", "list").stdout == ""
        assert agent.stop() == 0
    finally:
        agent.kill()
    for output in (gateway.log(), agent.log(), ping.stderr, check.stderr, logs.stderr):
        assert "Traceback" not in output


def test_without_a_running_gateway_the_cli_says_so_in_one_line(
    tmp_path: Path, sim: SimulatorProcess
) -> None:
    deployed = Deployment(tmp_path / "site", sim.url, (ROOM,))  # the gateway not started
    deployed.broker.start()
    try:
        ping = deployed.gateway.cli("room", "ping", ROOM, check=False)
        doctor = deployed.gateway.cli("doctor")  # probes the broker itself: nobody to disturb
    finally:
        deployed.broker.kill()
    assert ping.returncode == 2 and ping.stderr.count("\n") == 1, ping.stderr
    assert "the gateway does not answer at http://127.0.0.1:" in ping.stderr
    assert "broker: ok:" in doctor.stdout and "running gateway" not in doctor.stdout


@pytest.fixture
def two_replicas(
    tmp_path: Path, sim: SimulatorProcess, postgres: PostgresServer
) -> Iterator[tuple[Deployment, GatewayProcess]]:
    state = tmp_path / "site" / "gateway"
    state.mkdir(parents=True)
    deployed = Deployment(
        tmp_path / "site",
        sim.url,
        (ROOM,),
        replicas=("a", "b"),
        ROOM_GATEWAY_STORE__URL=postgres.url(postgres.database()),
        ROOM_GATEWAY_STORE__PASSWORD_FILE=str(postgres.password_file(state)),
        ROOM_GATEWAY_REPLICA="a",
    )
    b = deployed.gateway.replica("b")
    deployed.start()
    b.start()
    yield deployed, b
    b.stop()
    deployed.stop()


def test_each_replica_gets_the_answer_to_its_own_question(
    tmp_path: Path, two_replicas: tuple[Deployment, GatewayProcess], feeder: FifoFeeder
) -> None:
    deployment, b = two_replicas
    a = deployment.gateway
    agent = start_agent(tmp_path, deployment, feeder.path)
    try:
        with watch(deployment) as probe:
            probe.wait_for(probe.on(STATE, online=True), timeout=20)
        # The broker hands the device's answers (on its shared events topic) to the
        # replicas in turn: about half of each one's answers arrive at the other.
        for _ in range(6):
            for replica in (a, b):
                answer = replica.cli("room", "ping", ROOM, "--timeout", "10", check=False)
                assert answer.returncode == 0, (answer.stderr, replica.log()[-2000:])
        logs = b.cli("room", "logs", ROOM, "--since", "1h")
        assert logs.stdout.count("\n") >= 3
        assert agent.stop() == 0
    finally:
        agent.kill()
    for replica in (a, b):
        assert relay_connections(replica) == 1, replica.log()
        assert "Traceback" not in replica.log()
