"""A provisioned room device for the status and doctor tests: its settings (environment and
credential files, as systemd's LoadCredential= provides them), a real `room-agent`, and a
way to wait for what the running agent writes in its status file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.diagnostics.status_file import STATUS_FILE, StatusSnapshot, read_snapshot
from protocol.envelope import generate_private_key, public_key_to_text
from tests.support.alsa import write_asound_conf, write_raw
from tests.support.processes import Service

KEY = generate_private_key()
DEVICE = "room-5"
PASSWORD = "room-5-mqtt-secret"
TOKEN = "room-5-ingest-token"
SECRETS = (PASSWORD, TOKEN)
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")


def device_env(
    tmp_path: Path, broker_url: str = "", gateway_url: str = "", mic: Path | None = None
) -> dict[str, str]:
    """The device's environment; ``mic``: the raw file or FIFO the ALSA testmic reads
    (default: a silent file, so the microphone is there; a FIFO that does not exist yet is
    an unplugged one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}
    if mic is None:
        mic = write_raw(tmp_path / "idle-mic.raw", np.zeros(16_000, dtype=np.int16))
    env.update(write_asound_conf(tmp_path / "asound.conf", mic))
    secrets = tmp_path / "credentials"
    secrets.mkdir(exist_ok=True)
    (secrets / "ingest-token").write_text(TOKEN + "\n")
    (secrets / "mqtt-password").write_text(PASSWORD + "\n")
    env.update(
        CREDENTIALS_DIRECTORY=str(secrets),
        ROOM_AGENT_DEVICE_ID=DEVICE,
        ROOM_AGENT_STATE_DIR=str(tmp_path / "state"),
        ROOM_AGENT_GATEWAY_PUBLIC_KEY=public_key_to_text(KEY.public_key()),
        ROOM_AGENT_SPOOL__MIN_FREE_BYTES="0",
        ROOM_AGENT_AUDIO__DEVICE="testmic",
        # Fed at up to 8x real time: a queue of 60 s is 7.5 s of a consumer held up by a
        # slow disk on a shared machine, as 10 s (the default) is at 1x in a room.
        ROOM_AGENT_AUDIO__QUEUE_MAX_S="60",
        ROOM_AGENT_MQTT__BROKER_URL=broker_url,
        ROOM_AGENT_MQTT__HEARTBEAT_S="1",
        ROOM_AGENT_MQTT__RECONNECT_MIN_S="0.2",
        ROOM_AGENT_MQTT__RECONNECT_MAX_S="1",
        ROOM_AGENT_LINK__GATEWAY_URL=gateway_url,
        ROOM_AGENT_LINK__BACKOFF_BASE_S="0.1",
        ROOM_AGENT_LINK__BACKOFF_MAX_S="0.5",
    )
    return env


def room_agent(env: dict[str, str], *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [ROOM_AGENT, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    for secret in SECRETS:
        assert secret not in done.stdout + done.stderr, "a secret was printed"
    return done


def start_agent(tmp_path: Path, env: dict[str, str]) -> Service:
    return Service([ROOM_AGENT, "run"], tmp_path / "agent.log", env=env).start()


def wait_for_snapshot(
    tmp_path: Path, condition: Callable[[StatusSnapshot], bool], timeout: float = 15
) -> StatusSnapshot:
    """The running agent's status file, once ``condition`` holds for it."""
    path = tmp_path / "state" / STATUS_FILE
    deadline = time.monotonic() + timeout
    while True:
        snapshot = read_snapshot(path)
        if snapshot is not None and condition(snapshot):
            return snapshot
        assert time.monotonic() < deadline, f"status file: condition not met ({snapshot})"
        time.sleep(0.1)
