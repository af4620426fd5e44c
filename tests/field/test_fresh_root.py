"""The README, followed literally on fresh Debian 12 roots, reaches a recorded session.

Slow (about 10 minutes: two debootstraps, two installs from the package registries) and
root-only, so it runs only when asked: ``make field-test`` (ROOM_FRESH_ROOT=1). Set
ROOM_FRESH_ROOT_BASE to a debootstrapped directory to copy it instead of bootstrapping
twice. tests/field/fresh_root.py says what is stood in for, and why.
"""

from __future__ import annotations

import os
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from gateway.blueprint.defaults import DEFAULT_API_KEY, DEFAULT_CLIENT_SECRET
from tests.field.fresh_root import (
    ASOUND_CONF,
    MIC_FIFO,
    FieldError,
    FreshRoot,
    checkout_script,
    edits_env,
    readme_blocks,
    readme_script,
    tracebacks,
)
from tests.gateway.conftest import CLIENT_NAMES, CLINICIAN, simulator
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.certs import Pki
from tests.support.eventually import eventually
from tests.support.haproxy import HaProxy
from tests.support.processes import free_port, wait_for_http
from tests.support.speech import make_session

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.environ.get("ROOM_FRESH_ROOT") != "1" or os.geteuid() != 0,
        reason="the fresh-root test runs as root with ROOM_FRESH_ROOT=1 (make field-test)",
    ),
]
ROOM = "room-101"
ENROLL = re.compile(r"sudo room-agent enroll \S+ \S+ --pin sha256:[0-9a-f]{64}")
TOKEN = re.compile(r"store it now, it is not shown again:\n(\S+)\n")


def test_the_readme_installs_a_gateway_and_a_room_that_records(tmp_path: Path) -> None:
    base = (
        Path(os.environ["ROOM_FRESH_ROOT_BASE"]) if "ROOM_FRESH_ROOT_BASE" in os.environ else None
    )
    truth = make_session(tmp_path / "speech.wav", 40, 20, seed=11)
    speech, _ = soundfile.read(truth.path, dtype="int16")
    talk = np.concatenate([speech[start:end] for start, end in truth.spans])  # no pauses
    gateway_port, broker_port = free_port(), free_port()
    pki = Pki.create(tmp_path / "pki")
    pem = tmp_path / "proxy.pem"
    pem.write_text(pki.server_cert.read_text() + pki.server_key.read_text())
    proxy = HaProxy(tmp_path / "haproxy", {"gateway": gateway_port}, tls_pem=pem, checks=False)
    roots: list[FreshRoot] = []
    with simulator(tmp_path / "simulator") as sim:
        proxy.start()
        try:
            gateway = FreshRoot.create(tmp_path / "gateway-root", base)
            roots.append(gateway)
            device = FreshRoot.create(tmp_path / "device-root", base)
            roots.append(device)

            # The gateway host, as "Install a gateway" says.
            gateway.run(checkout_script(), "apt-get install git make; a checkout")
            [install] = readme_blocks("Install a gateway")
            edits: dict[str, dict[str, object]] = {
                "gateway.http": {"port": gateway_port},
                "gateway.blueprint": {"base_url": sim.url},
                "gateway.mqtt": {"broker_url": f"mqtt://127.0.0.1:{broker_port}"},
                "gateway.broker": {"host": "127.0.0.1", "port": broker_port},
                "gateway.devices": {
                    "gateway_url": proxy.url,
                    "broker_url": f"mqtt://127.0.0.1:{broker_port}",
                },
            }
            env = {"API_KEY": DEFAULT_API_KEY, "SECRET": DEFAULT_CLIENT_SECRET, **edits_env(edits)}
            said = gateway.run(readme_script(install), "Install a gateway", env)
            # Before the README's next lines put them there, the install names the secrets.
            for name in ("blueprint-api-key", "blueprint-client-secret"):
                assert f"  /etc/room-audio/credentials/{name}\n" in said, said[:3000]
            token = TOKEN.search(said)
            assert token is not None, said[-2000:]
            wait_for_http(f"http://127.0.0.1:{gateway_port}/healthz", timeout=30)
            sim.set_callback(f"http://127.0.0.1:{gateway_port}/v1/webhooks/blueprint")

            # "Provision and install a room device": on the gateway, then on the device.
            on_gateway, on_device = readme_blocks("Provision and install a room device")
            alias = [line for line in install if line.startswith("alias rg=")]
            provision = [line for line in on_gateway if " device revoke " not in line]
            added = gateway.run(readme_script(alias + provision), "device add")
            enroll = ENROLL.search(added)
            assert enroll is not None, added
            device.run(checkout_script(), "apt-get install git make; a checkout")
            (device.path / "etc/asound.conf").write_text(ASOUND_CONF)
            fifo = device.path / MIC_FIFO.lstrip("/")
            script = readme_script(on_device, {"sudo room-agent enroll": enroll[0]})
            with FifoFeeder(fifo, period_frames=PERIOD_FRAMES) as feeder:
                talking(feeder, talk, lambda: device.run(script, "install a room device"))
                done = partner_session(proxy.url, pki.ca_cert, token[1], feeder, speech)
            uploads = sim.state()["audio_uploads"]
        finally:
            proxy.stop()
            logs = {}
            for root in roots:
                logs.update(root.logs())
                root.close()
    assert done["state"] == "notes_ready", done
    assert done["audio"]["speech_s"] > 5, done  # of the 12 s of speech played
    assert done["audio"]["chunks_received"] == done["audio"]["manifest_chunks"], done
    assert uploads == 1, "recorded once, uploaded once"
    assert tracebacks(logs) == [], "a traceback in front of a user"


def talking(feeder: FifoFeeder, speech: np.ndarray, steps: Callable[[], object]) -> None:
    """Someone talks in the room while ``steps`` run (`ra check` and doctor's sound check
    listen), in 5 s turns, and stops when they are done."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            steps()
        except BaseException as exc:  # re-raised on the test's thread
            failed.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    turn = 0
    while worker.is_alive():
        start = (turn * 5 * 16_000) % (len(speech) - 5 * 16_000)
        feeder.play(speech[start : start + 5 * 16_000])
        feeder.wait_played(10)
        turn += 1
    worker.join()
    if failed:
        raise failed[0]


def partner_session(url: str, ca: Path, token: str, feeder: FifoFeeder, speech: np.ndarray) -> dict:
    """The partner application's session, through the TLS proxy: people, start, speech,
    stop, notes_ready."""
    with httpx.Client(
        base_url=url,
        verify=ssl.create_default_context(cafile=ca),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as http:
        assert http.put("/v1/clinicians/clin-1", json=CLINICIAN).status_code in (200, 202)
        client = {**CLIENT_NAMES, "clinician_external_id": "clin-1"}
        assert http.put("/v1/clients/client-1", json=client).status_code in (200, 202)
        body = {"room": ROOM, "clinician_external_id": "clin-1", "client_external_id": "client-1"}
        started = http.post("/v1/sessions", json=body)
        if started.status_code not in (201, 202):
            raise FieldError(f"POST /v1/sessions: {started.status_code} {started.text}")
        session = started.json()["session_id"]

        def state() -> str:
            return http.get(f"/v1/sessions/{session}").json()["state"]

        eventually(lambda: state() == "recording", timeout=60, what="the room records")
        feeder.play(np.concatenate([speech[: 16_000 * 12], np.zeros(16_000 * 3, speech.dtype)]))
        assert feeder.wait_played(60), "the microphone was not read"
        time.sleep(0.5)
        assert http.post(f"/v1/sessions/{session}/stop").status_code == 200
        eventually(lambda: state() in ("notes_ready", "failed"), timeout=120, what="notes")
        return http.get(f"/v1/sessions/{session}").json()
