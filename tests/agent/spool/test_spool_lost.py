"""A spool lost under the agent: deleted while it runs (``rm -rf``, a card that came back
empty), or gone at a restart while the recorder's state file survived.

Before: the agent kept reporting ``recording`` with nothing being stored, new sessions
could not start (the gateway answered "room busy", 409), and SIGTERM ended in a
traceback; after a restart the resumed session began again at seq 0 and every chunk got
409 for ever. Now it recovers by itself: the spool is recreated, the session goes on
without reusing a seq, what the gateway already holds stays in the manifest, the loss is
reported (log line, device state ``spool_lost``), and expected events are one line.

Real `room-agent run`, real mosquitto, the stand-in ingest server, PortAudio through the
ALSA file plugin fed from a FIFO.
"""

from __future__ import annotations

import shutil

import pytest

from protocol.messages import StartCommand, StopCommand
from protocol.topics import topic
from tests.agent.device_setup import DEVICE, device_env, start_agent
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.mqtt_probe import Probe
from tests.support.speech import make_session_pcm

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

STATE, EVENTS, CMD = (topic(DEVICE, kind) for kind in ("state", "events", "cmd"))
SPEED = 8


def command(probe: Probe, message, timeout: float = 30.0) -> dict:
    after = probe.count()
    probe.publish(CMD, message)
    reply = probe.on(EVENTS, type="command_result", command_id=message.command_id)
    return probe.wait_for(reply, timeout, after).json()


def assert_consistent(ingest, session_id: str) -> list[int]:
    """The manifest lists only chunks the server holds, byte for byte; never a 409."""
    manifest = ingest.manifest(session_id)
    assert manifest is not None
    held = ingest.chunks(session_id)
    for chunk in manifest.chunks:
        assert held[(session_id, chunk.seq)].sha256 == chunk.sha256
    assert not [r for r in ingest.requests() if r.status == 409], "a seq was used twice"
    return [c.seq for c in manifest.chunks]


def test_a_spool_deleted_while_recording_is_recreated_and_recording_goes_on(
    tmp_path, broker, ingest
):
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    env["ROOM_AGENT_AUDIO__MAX_CHUNK_S"] = "2"
    spool = tmp_path / "state" / "spool"
    pcm, _ = make_session_pcm(12, 20, seed=5)
    half = len(pcm) // 2 // PERIOD_FRAMES * PERIOD_FRAMES
    with (
        FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=SPEED) as mic,
        Probe(broker) as probe,
    ):
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=40)
            assert command(probe, StartCommand(command_id="go", session_id="lost-1"))["ok"]
            mic.play(pcm[:half])
            ingest.wait_until(lambda: len(ingest.chunks("lost-1")) >= 2, timeout=40)
            ingest.answer_all(503)  # what is spooled from now on is still on the device
            assert mic.wait_played(60)
            delivered = set(ingest.chunks("lost-1"))
            gone = tmp_path / "gone"
            spool.rename(gone)  # all at once: journals, chunks, lock, quarantine
            shutil.rmtree(gone)
            ingest.answer_all(None)
            after = probe.count()
            mic.play(pcm[half:])
            assert mic.wait_played(60)
            lost = probe.wait_for(probe.on(STATE, reason="spool_lost"), 40, after).json()
            assert (lost["recorder"], lost["session_id"]) == ("recording", "lost-1")
            assert command(probe, StopCommand(command_id="end", session_id="lost-1"))["ok"]
            ingest.wait_until(lambda: ingest.manifest("lost-1") is not None, timeout=40)

            assert command(probe, StartCommand(command_id="go2", session_id="lost-2"))["ok"]
            mic.play(pcm[:half])
            assert mic.wait_played(60)
            assert command(probe, StopCommand(command_id="end2", session_id="lost-2"))["ok"]
            ingest.wait_until(lambda: ingest.manifest("lost-2") is not None, timeout=40)
            assert agent.stop(30) == 0
        finally:
            agent.kill()
    seqs = assert_consistent(ingest, "lost-1")
    assert {seq for _, seq in delivered} <= set(seqs), "what the gateway holds stays listed"
    assert max(seqs) > max(seq for _, seq in delivered), "recording went on after the loss"
    assert assert_consistent(ingest, "lost-2")
    log = agent.log()
    assert "Traceback" not in log, log
    assert sum("vanished while in use" in line for line in log.splitlines()) == 1


@pytest.mark.parametrize("recording", [True, False], ids=["recording", "idle"])
def test_sigterm_right_after_the_spool_vanished_is_a_clean_stop(
    tmp_path, broker, ingest, recording
):
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    env["ROOM_AGENT_AUDIO__MAX_CHUNK_S"] = "2"
    spool = tmp_path / "state" / "spool"
    pcm, _ = make_session_pcm(6, 20, seed=7)
    with (
        FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=SPEED) as mic,
        Probe(broker) as probe,
    ):
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=40)
            if recording:
                assert command(probe, StartCommand(command_id="go", session_id="lost-3"))["ok"]
                mic.play(pcm)
                ingest.wait_until(lambda: len(ingest.chunks("lost-3")) >= 1, timeout=40)
            gone = tmp_path / "gone"
            spool.rename(gone)
            shutil.rmtree(gone)
            assert agent.stop(30) == 0
        finally:
            agent.kill()
    log = agent.log()
    assert "Traceback" not in log, log
    assert log.rstrip().endswith("room-agent: stopped"), log


def test_a_spool_lost_across_a_restart_resumes_past_every_used_seq(tmp_path, broker, ingest):
    """The recorder's state file survives, the spool does not (a power cut, then a card
    that comes back empty): before, the session began again at seq 0 and got 409 for ever."""
    env = device_env(tmp_path, broker.url, ingest.url, tmp_path / "mic.fifo")
    env["ROOM_AGENT_AUDIO__MAX_CHUNK_S"] = "2"
    spool = tmp_path / "state" / "spool"
    pcm, _ = make_session_pcm(12, 20, seed=5)
    half = len(pcm) // 2 // PERIOD_FRAMES * PERIOD_FRAMES
    with (
        FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=SPEED) as mic,
        Probe(broker) as probe,
    ):
        agent = start_agent(tmp_path, env)
        try:
            probe.wait_for(probe.on(STATE, online=True), timeout=40)
            assert command(probe, StartCommand(command_id="go", session_id="gone-1"))["ok"]
            mic.play(pcm[:half])
            ingest.wait_until(lambda: len(ingest.chunks("gone-1")) >= 2, timeout=40)
            agent.kill()  # a power cut
            before = {seq for _, seq in ingest.chunks("gone-1")}
            shutil.rmtree(spool)  # and the spool is gone when it comes back

            after = probe.count()
            agent = start_agent(tmp_path, env)
            state = probe.wait_for(probe.on(STATE, recorder="recording"), 40, after).json()
            assert state["session_id"] == "gone-1"
            mic.play(pcm[half:])
            assert mic.wait_played(60)
            probe.wait_for(probe.on(STATE, reason="spool_lost"), 40, after)
            assert command(probe, StopCommand(command_id="end", session_id="gone-1"))["ok"]
            ingest.wait_until(lambda: ingest.manifest("gone-1") is not None, timeout=40)
            assert agent.stop(30) == 0
        finally:
            agent.kill()
    manifest = ingest.manifest("gone-1")
    assert manifest is not None and manifest.records_lost_below is not None
    assert max(before) < manifest.records_lost_below, "no seq it may have used is reused"
    seqs = assert_consistent(ingest, "gone-1")
    assert seqs and min(seqs) >= manifest.records_lost_below, "recorded after the restart"
    held = {seq for _, seq in ingest.chunks("gone-1")}
    assert before | set(seqs) == held, "what came before is at the gateway, the rest listed"
    log = agent.log()
    assert "Traceback" not in log, log
    assert "gone from the spool (lost)" in log
