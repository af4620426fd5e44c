"""Several gateways as a partner runs them, and what a host's loss does to them: four
`room-gateway serve` replicas on one PostgreSQL, one mosquitto (from broker-config's
files), HAProxy in front (agents, partner calls and the simulator's webhooks all go
through it), the Blueprint simulator and three real room agents recording at once.

Faults, none repaired until the end: a replica SIGKILLed while chunks stream in; the
PostgreSQL server restarted mid-session (the replicas answer 503 with Retry-After, the
agents keep spooling); the replica running an upload job SIGKILLed during the upload; the
replica fetching a note after a webhook SIGKILLed during the fetch. Three replicas die,
so there are four: one is left. Then: every session is notes_ready, Blueprint has exactly
one session and one upload per room session, every chunk the agents made arrived once,
and each room's agent heard notes_ready.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.gateway.conftest import PARTNER_TOKEN, GatewayProcess, SimulatorProcess, steps
from tests.gateway.deployment import Deployment
from tests.integration.test_room_to_blueprint import cut, start_agent
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.haproxy import HaProxy
from tests.support.postgres import PostgresServer
from tests.support.processes import Service, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOMS = ("room-1", "room-2", "room-3")
REPLICAS = ("a", "b", "c", "d")
LEASE_S = 3.0


@dataclass
class Site:
    deployment: Deployment
    replicas: dict[str, GatewayProcess]
    haproxy: HaProxy
    front: httpx.Client  # the partner application, through HAProxy
    postgres: PostgresServer

    def alive(self) -> dict[str, GatewayProcess]:
        return {n: r for n, r in self.replicas.items() if r.service and r.service.alive()}

    def session(self, session_id: str) -> dict[str, Any]:
        answer = self.front.get(f"/v1/sessions/{session_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def query(self, sql: str, *args: object) -> list[Any]:
        return next(iter(self.alive().values())).query(sql, *args)


@pytest.fixture
def site(tmp_path: Path, sim: SimulatorProcess, postgres: PostgresServer) -> Iterator[Site]:
    if not postgres.can_restart:
        pytest.skip("the PostgreSQL server is external: it cannot be restarted here")
    name = postgres.database()
    state = tmp_path / "site" / "gateway"
    state.mkdir(parents=True)
    proxy_port = free_port()
    deployment = Deployment(
        tmp_path / "site",
        sim.url,
        ROOMS,
        gateway_url=f"http://127.0.0.1:{proxy_port}",
        replicas=REPLICAS,
        ROOM_GATEWAY_STORE__URL=postgres.url(name),
        ROOM_GATEWAY_STORE__PASSWORD_FILE=str(postgres.password_file(state)),
        ROOM_GATEWAY_STORE__UNAVAILABLE_S="1",
        ROOM_GATEWAY_REPLICA="a",
        ROOM_GATEWAY_JOBS__LEASE_S=str(LEASE_S),
        ROOM_GATEWAY_MQTT__COMMAND_EXPIRY_S="90",
    )
    replicas = {"a": deployment.gateway}
    replicas |= {n: deployment.gateway.replica(n) for n in REPLICAS[1:]}
    deployment.broker.start()
    for replica in replicas.values():
        replica.start()
    ports = {f"gw-{n}": r.port for n, r in replicas.items()}
    haproxy = HaProxy(tmp_path / "haproxy", ports, port=proxy_port).start()
    front = httpx.Client(
        base_url=haproxy.url, timeout=30, headers={"Authorization": f"Bearer {PARTNER_TOKEN}"}
    )
    sim.set_callback(f"{haproxy.url}/v1/webhooks/blueprint")
    try:
        yield Site(deployment, replicas, haproxy, front, postgres)
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            postgres.start_again()  # if a failure left it stopped
        haproxy.stop()
        for replica in replicas.values():
            replica.stop()
        deployment.broker.kill()
        postgres.drop(name)


def wait(condition: Callable[[], Any], timeout: float, what: str, site: Site | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (snapshot(site) if site else ""))
        time.sleep(0.1)
    return value


def snapshot(site: Site) -> str:
    """The sessions and jobs as the store has them, for a failure's message."""
    sessions = site.query("SELECT id, state FROM sessions ORDER BY created_at")
    ingest = site.query("SELECT session_id, state FROM ingest_sessions")
    jobs = site.query("SELECT id, kind, state, attempts, lease_owner, last_error FROM jobs")
    rows = [[tuple(row) for row in found] for found in (sessions, ingest, jobs)]
    return "\nsessions {}\ningest {}\njobs {}".format(*rows)


def play_all(feeders: list[FifoFeeder], pcm: np.ndarray) -> None:
    for feeder in feeders:
        feeder.play(pcm)
    for feeder in feeders:
        assert feeder.wait_played(60), "a FIFO was not read"


def running_job(site: Site, kind: str) -> tuple[str, int] | None:
    """The live replica and the ``kind`` job it claimed last, if it runs one: the one with
    the most left to do, so a kill now lands inside it."""
    rows = site.query(
        "SELECT lease_owner, id FROM jobs WHERE kind = ? AND state = 'running'"
        " ORDER BY updated_at DESC",
        kind,
    )
    alive = site.alive()
    for owner, job_id in rows:
        name = (owner or "").split("/")[0]
        if name in alive:
            return name, int(job_id)
    return None


def kill_inside(site: Site, kind: str, timeout: float) -> tuple[str, int, bool]:
    """Kill the replica running a ``kind`` job: (replica, job id, whether the kill landed
    inside the job). The job can still commit its end between the look and the kill; read
    once the process is dead, its row tells which it was (a dead process changes nothing)."""
    name, job_id = wait(lambda: running_job(site, kind), timeout, f"a {kind} job", site)
    site.replicas[name].kill()
    (state,) = site.query("SELECT state FROM jobs WHERE id = ?", job_id)[0]
    return name, job_id, state == "running"


def test_replicas_lose_hosts_and_the_database_restarts_yet_every_session_completes(
    tmp_path: Path, site: Site, sim: SimulatorProcess, speech: np.ndarray
) -> None:
    front = site.front
    assert front.put("/v1/clinicians/clin-f", json={"first_name": "A", "last_name": "B"})
    front.put(
        "/v1/clients/client-f",
        json={"first_name": "C", "last_name": "D", "clinician_external_id": "clin-f"},
    )
    feeders: list[FifoFeeder] = []
    agents: list[Service] = []
    try:
        for room in ROOMS:
            directory = tmp_path / room
            directory.mkdir()
            feeder = FifoFeeder(
                directory / "mic.fifo", period_frames=PERIOD_FRAMES, speed=8
            ).__enter__()
            feeders.append(feeder)
            agents.append(start_agent(directory, site.deployment, feeder.path, room))
        for room in ROOMS:
            wait(partial(room_online, front, room), 30, f"{room} online")
        sessions: dict[str, str] = {}
        for room in ROOMS:
            body = {"room": room, "clinician_external_id": "clin-f",
                    "client_external_id": "client-f"}  # fmt: skip
            answer = front.post("/v1/sessions", json=body)
            # 202 "starting": the room's device has not confirmed yet (waited for below).
            assert answer.status_code == 202, answer.text
            sessions[room] = answer.json()["session_id"]
        for session_id in sessions.values():
            wait(partial(has_step, site, session_id, "start_confirmed"), 30, "start")

        # 1. A replica dies while the chunks stream in.
        def kill_during_ingest() -> None:
            wait(lambda: site.query("SELECT COUNT(*) FROM chunks")[0][0] >= 2, 30, "chunks")
            site.replicas["a"].kill()

        killer = threading.Thread(target=kill_during_ingest)
        killer.start()
        play_all(feeders, speech[: cut(16)])
        killer.join(40)
        assert "a" not in site.alive()

        # 2. PostgreSQL restarts mid-session: 503 with Retry-After, the agents spool.
        site.postgres.stop("fast")
        outage: list[httpx.Response] = []
        probe = next(iter(sessions.values()))

        def refused() -> bool:
            answer = front.get(f"/v1/sessions/{probe}")
            outage.append(answer)
            return answer.status_code == 503

        wait(refused, 20, "a 503 while the database is away")
        assert outage[-1].headers.get("Retry-After"), outage[-1].headers
        play_all(feeders, speech[cut(16) : cut(28)])  # recorded during the outage
        site.postgres.start_again()
        play_all(feeders, speech[cut(28) :])
        time.sleep(1.0)

        # 3. Uploads slowed (every Blueprint call waits 2 s): the upload's replica dies.
        sim.faults(latency_ms=2000)
        for session_id in sessions.values():
            wait(partial(stopped, front, session_id), 30, "stop")
        uploader, upload_job, upload_hit = kill_inside(site, "upload_audio", 60)

        # 4. A webhook's note fetch is running on a replica: it dies too.
        fetcher, fetch_job, fetch_hit = kill_inside(site, "fetch_artifact", 90)
        assert len(site.alive()) == 1
        sim.faults(latency_ms=0)

        done = {
            room: wait(partial(notes_ready, site, s), 120, f"{room} notes_ready", site)
            for room, s in sessions.items()
        }
        for room, session_id in sessions.items():
            agent = agents[ROOMS.index(room)]
            told = f"session {session_id}: notes_ready"
            wait(partial(logged, agent, told), 30, f"{room}'s agent told notes_ready")
    finally:
        for agent in agents:
            agent.kill()
        for feeder in feeders:
            feeder.__exit__(None, None, None)

    # Blueprint: one session and one upload per room session.
    details = list(sim.state()["session_details"].values())
    for session_id in sessions.values():
        assert [d["session_external_id"] for d in details].count(session_id) == 1
    assert sim.state()["audio_uploads"] == len(ROOMS)
    # No chunk lost: every chunk the manifest lists arrived, and Blueprint has their audio.
    for room, session_id in sessions.items():
        audio = done[room]["audio"]
        assert audio["chunks_received"] == audio["manifest_chunks"] >= 3, audio
        speech_s = site.query(
            "SELECT SUM(duration_s) FROM chunks WHERE session_id = ?", session_id
        )[0][0]
        at_blueprint = next(d for d in details if d["session_external_id"] == session_id)
        assert at_blueprint["audio_duration_s"] == pytest.approx(speech_s, abs=1e-3)
    hits = {(upload_job, "upload_audio"): upload_hit, (fetch_job, "fetch_artifact"): fetch_hit}
    assert any(hits.values()), f"both kills came after their job had ended: {hits}"
    for (job_id, kind), hit in hits.items():
        if hit:  # a dead replica's job is taken over once its lease runs out, even when
            # the session got there by another job first (a note fetch per webhook)
            taken = f"job {job_id} {kind} taken over from"
            wait(partial(logged_by_any, site, taken), 30, taken, site)
    assert "Traceback" not in replica_logs(site)
    print(
        f"\nreplicas killed: a (ingest), {uploader} (upload), {fetcher} (note fetch);"
        f" PostgreSQL restarted; {len(ROOMS)} sessions notes_ready"
    )


def replica_logs(site: Site) -> str:
    return "".join(replica.log() for replica in site.replicas.values())


def logged_by_any(site: Site, text: str) -> bool:
    return text in replica_logs(site)


def room_online(front: httpx.Client, room: str) -> bool:
    return bool(front.get(f"/v1/rooms/{room}").json()["online"])


def has_step(site: Site, session_id: str, step: str) -> bool:
    return step in steps(site.session(session_id))


def stopped(front: httpx.Client, session_id: str) -> bool:
    return front.post(f"/v1/sessions/{session_id}/stop").status_code == 200


def notes_ready(site: Site, session_id: str) -> dict[str, Any] | None:
    found = site.session(session_id)
    return found if found["state"] == "notes_ready" else None


def logged(service: Service, text: str) -> bool:
    return text in service.log()
