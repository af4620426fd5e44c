"""The order of a room's commands, in one gateway, on a real store and a real mosquitto:
the relay's Commands with its MqttLink, driven by hand so the interleaving is exact.

A start overtaken by the partner's next request (a pause while the room is still
starting) must be either out before that request is answered, or never sent; and every
session command carries a generation above the room's earlier ones, so the device can
refuse one that reaches it late (tests/agent/link/test_control.py has the device's side).
A device that answers or shows a command done before the sender recorded its send still
gets ``start_sent`` on the session's timeline, before ``start_confirmed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway import rooms
from gateway.jobs import queue as jobs
from gateway.jobs.queue import Job
from gateway.relay import commands as commands_module
from gateway.relay.commands import Commands
from gateway.relay.link import MqttLink
from gateway.sessions import desired, records
from gateway.sessions import states as sessions
from gateway.sessions.lifecycle import JobKind, SessionLifecycle
from gateway.settings import JobSettings, MqttSettings
from gateway.store import Connection, Database, Location
from protocol.messages import DeviceState
from tests.support.eventually import eventually_async
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe

pytestmark = pytest.mark.timeout(60)
ROOM = "room-1"
CMD = f"rooms/{ROOM}/cmd"
PASSWORD = "gateway-secret"
ANSWERED = json.dumps({"sentinel": "the partner's pause is answered"})


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "broker", users={"gateway": PASSWORD}) as running:
        yield running


@pytest.fixture
def probe(broker: Broker) -> Iterator[Probe]:
    with Probe(broker, "gateway", PASSWORD, topics=(CMD,)) as listening:
        yield listening


@pytest.fixture
def db(store_location: Location) -> Iterator[Database]:
    database = Database.open(store_location)
    with database.transaction() as conn:
        rooms.add(conn, ROOM)
        records.put_clinician(conn, "clin-1", "Adelaide", "Quintrell", None)
        records.put_client(conn, "client-1", "Bartholomew", "Zanzibarre", "clin-1")
    yield database
    database.close()


async def _nothing(topic: str, payload: bytes) -> None:
    return None


async def _connected_link(broker: Broker) -> MqttLink:
    settings = MqttSettings(broker_url=broker.url, username="gateway")
    link = MqttLink(
        settings, SecretStr(PASSWORD), [f"rooms/{ROOM}/events"], _nothing, client_id="gateway"
    )
    link.start()
    await eventually_async(
        lambda: link.connected,
        timeout=10,
        interval=0.02,
        what="the gateway's link did not connect",
    )
    return link


def _begin(lifecycle: SessionLifecycle, commands: Commands) -> Callable[[Connection], str]:
    def begin(conn: Connection) -> str:
        session = lifecycle.start(
            conn, ROOM, "clin-1", "client-1", "in-person", None, waits_for_room=True
        )
        commands.queue(conn, ROOM, session.id, "start")
        return session.id

    return begin


def _send_jobs(conn: Connection) -> list[Job]:
    queued = [job for job in jobs.list_jobs(conn, "queued") if job.kind == JobKind.DEVICE_COMMAND]
    return sorted(queued, key=lambda job: job.id)


def _commands_seen(probe: Probe) -> list[dict]:
    return [message.json() for message in probe.messages if message.topic == CMD]


def test_a_start_the_partner_overtook_is_out_before_the_answer_or_never(
    db: Database, broker: Broker, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partner pauses a starting session just as the relay has decided to send its
    start (not overtaken yet) and before the start is out. The pause's answer must not
    come before that start is out: else the room records, unpaused, what the partner was
    told is paused. Then the start that begins paused goes out, with a higher generation."""
    lifecycle = SessionLifecycle(JobSettings(), "bpenv_test")

    async def scenario() -> None:
        link = await _connected_link(broker)
        commands = Commands(db, link, lifecycle, 30)
        session_id = await db.run(_begin(lifecycle, commands))
        (first,) = await db.run(_send_jobs)
        loop = asyncio.get_running_loop()

        def pause(conn: Connection) -> None:
            session = lifecycle.pause(conn, session_id, pause=True)
            commands.pause(conn, session, pause=True)

        async def partner_pauses() -> None:
            """What POST /v1/sessions/{id}/pause does (gateway/api/sessions.py)."""
            async with commands.ordered(ROOM):
                await db.run(pause)
            await link.publish(CMD, ANSWERED)  # the partner has its answer now

        decide = commands_module._to_send

        def decided_then_overtaken(conn: Connection, command_id: str):
            found = decide(conn, command_id)
            request = asyncio.run_coroutine_threadsafe(partner_pauses(), loop)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                request.result(timeout=1.0)  # answered at once, or waiting for the send
            return found

        monkeypatch.setattr(commands_module, "_to_send", decided_then_overtaken)
        await commands.send(first)
        monkeypatch.setattr(commands_module, "_to_send", decide)
        await asyncio.to_thread(
            probe.wait_for, lambda m: m.topic == CMD and m.payload == ANSWERED.encode()
        )
        second = (await db.run(_send_jobs))[-1]  # the first is done (sent by hand)
        await commands.send(second)
        await asyncio.to_thread(
            probe.wait_for, lambda m: m.topic == CMD and m.json().get("paused") is True
        )
        await link.stop()

    asyncio.run(scenario())
    seen = _commands_seen(probe)
    answered = seen.index(json.loads(ANSWERED))
    starts = [(at, m) for at, m in enumerate(seen) if m.get("type") == "start"]
    unpaused = [at for at, m in starts if m["paused"] is False]
    assert all(at < answered for at in unpaused), f"an overtaken start went out after: {seen}"
    assert starts[-1][1]["paused"] is True, "the room ends with the start that begins paused"
    generations = [m["generation"] for _, m in starts]
    assert generations == sorted(generations) and len(set(generations)) == len(generations)


def test_a_device_faster_than_the_sender_still_shows_the_send_on_the_timeline(
    db: Database, broker: Broker, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load the device may report the session recording before the sender has
    recorded its send (seen as a flaky ``start_sent`` missing in test_relay): the
    timeline still shows the start sent, then confirmed."""
    lifecycle = SessionLifecycle(JobSettings(), "bpenv_test")

    async def scenario() -> str:
        link = await _connected_link(broker)
        commands = Commands(db, link, lifecycle, 30)
        session_id = await db.run(_begin(lifecycle, commands))
        (first,) = await db.run(_send_jobs)
        publish = link.publish

        async def published_then_answered(topic: str, payload: str, expiry_s: int | None = None):
            await publish(topic, payload, expiry_s)
            state = DeviceState(
                device_id=ROOM, online=True, recorder="recording", session_id=session_id,
                last_command_id=json.loads(payload)["command_id"],
            )  # fmt: skip
            await db.run(commands.reported, ROOM, state)  # before the sender records it

        monkeypatch.setattr(link, "publish", published_then_answered)
        await commands.send(first)
        await link.stop()
        return session_id

    session_id = asyncio.run(scenario())
    timeline = [entry.step for entry in db.call(sessions.timeline, session_id, write=False)]
    assert "start_sent" in timeline, timeline
    assert timeline.index("start_sent") < timeline.index("start_confirmed"), timeline
    assert timeline.count("start_sent") == 1, timeline


def test_a_late_report_from_before_a_pause_does_not_count_as_its_resume(db: Database) -> None:
    """Seen in pause_latency under load: a state the device sent just before it carried
    out a pause ("recording, not paused", naming the start) reached the relay after the
    partner's resume was decided. It looked like the resume done, the resume was settled
    and never sent, and the room stayed paused. A state naming a command older than the
    wanted one says nothing of the wanted one: the resume is still sent."""
    lifecycle = SessionLifecycle(JobSettings(), "bpenv_test")
    commands = Commands(db, None, lifecycle, 30)  # type: ignore[arg-type]  # nothing sent here

    def state(session_id: str, command_id: str, paused: bool) -> DeviceState:
        return DeviceState(
            device_id=ROOM, online=True, recorder="recording", session_id=session_id,
            paused=paused, last_command_id=command_id,
        )  # fmt: skip

    def wanted(conn: Connection) -> str:
        want = desired.get(conn, ROOM)
        assert want is not None and want.command_id is not None
        return want.command_id

    def scenario(conn: Connection) -> str:
        session_id = _begin(lifecycle, commands)(conn)
        start_id = wanted(conn)
        commands.reported(conn, ROOM, state(session_id, start_id, paused=False))
        assert sessions.get(conn, session_id).state == "recording"
        session = lifecycle.pause(conn, session_id, pause=True)
        commands.pause(conn, session, pause=True)
        pause_id = wanted(conn)
        commands.reported(conn, ROOM, state(session_id, pause_id, paused=True))
        session = lifecycle.pause(conn, session_id, pause=False)
        commands.pause(conn, session, pause=False)
        resume_id = wanted(conn)
        # The late report, from before the pause was carried out:
        commands.reported(conn, ROOM, state(session_id, start_id, paused=False))
        return resume_id

    resume_id = db.call(scenario)
    resume = db.call(commands_module.get, resume_id, write=False)
    assert resume.state in ("queued", "sent"), "the resume is still to be sent"
    assert db.call(commands_module._to_send, resume_id, write=False) is not None
    assert db.call(desired.get, ROOM, write=False).confirmed_at is None
