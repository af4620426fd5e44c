"""The typed partner client's example script runs a whole session against the demo stack:
mosquitto, the simulator, ``room-gateway serve`` and ``room-agent run`` set up by the
gateway's own commands (devtools/demo/stack.py), speech played into the room's microphone
once the device confirms it is recording."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.demo.conversation import build_conversation
from devtools.demo.microphone import PERIOD_FRAMES, FifoFeeder
from devtools.demo.processes import http_up, wait_until
from devtools.demo.stack import Layout, Ports, Stack
from partner_client import PartnerClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "partner_session.py"
SPEED = 3.0  # the speech played three times faster than real time


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, str, FifoFeeder]]:
    layout = Layout(tmp_path / "demo")
    stack = Stack(layout, Ports.pick())
    stack.write_config()
    token = stack.provision()
    feeder = None
    try:
        stack.start_services()
        wait_until(lambda: http_up(f"{stack.simulator_url}/_sim/state"), 30, "simulator")
        wait_until(lambda: http_up(f"{stack.gateway_url}/readyz"), 30, "gateway")
        feeder = FifoFeeder(layout.fifo, period_frames=PERIOD_FRAMES, speed=SPEED)
        stack.start_agent()
        yield stack, token, feeder
    finally:
        for child in reversed(stack.children):
            child.stop(10.0)
        if feeder is not None:
            feeder.stop()


def test_the_example_session_completes_against_the_demo_stack(
    stack: tuple[Stack, str, FifoFeeder],
) -> None:
    demo, token, feeder = stack
    conversation = build_conversation()
    with PartnerClient(demo.gateway_url, token) as api:
        wait_until(lambda: api.room(demo.room).online, 60, "the room's device online")
    record_s = conversation.duration_s / SPEED + 2
    script = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--gateway", demo.gateway_url, "--room", demo.room,
         "--record-seconds", f"{record_s:.1f}", "--timeout", "120"],
        env={**os.environ, "PARTNER_TOKEN": token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    assert script.stdout is not None
    lines = []
    for line in script.stdout:
        lines.append(line)
        if line.startswith("recording:"):
            feeder.play(conversation.pcm)
            break
    rest, _ = script.communicate(timeout=240)
    output = "".join(lines) + rest
    assert script.returncode == 0, output
    assert "progress note:" in output and "notes_ready" in output
    assert "audio_uploaded" in output and "start_confirmed" in output
    assert token not in output
