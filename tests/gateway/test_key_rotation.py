"""`keygen --force` rotates the sealing key without making any audio unopenable (issue 10,
row 17): the old key is kept (retired-keys/, 0600) before the new one replaces it, chunks
still sealed to it (a device's spool) are taken at ingest and assembled, the running
gateway serves the new key at once to the device's own key check, and the store's audio
key is untouched.

Real processes: mosquitto, `room-gateway serve` (SIGKILLed and restarted), `room-gateway
keygen --force` while it runs, the simulator as Blueprint; the device's key check is the
agent's own code (agent/link/key_check.py) against the gateway's endpoint.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from agent.link.key_check import KeyCheck, check_key
from gateway.keys import load_key
from protocol.envelope import generate_private_key, key_fingerprint, private_key_to_pem
from tests.gateway.conftest import SimulatorProcess, StoreEnv, steps
from tests.gateway.deployment import Deployment, tone
from tests.gateway.problems import assert_problem
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(180), pytest.mark.slow]
ROOM = "room-1"


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess, store_env: StoreEnv
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("rotation")
    env = store_env(root / "gateway")
    deployment = Deployment(root, blueprint_sim.url, (ROOM,), None, None, (), **env)
    yield deployment.start()
    deployment.stop()


def key_check(deployed: Deployment, public_key: X25519PublicKey) -> KeyCheck:
    """The device's own check, with the device's token."""
    headers = {"Authorization": f"Bearer {deployed.devices[ROOM].token}"}
    with httpx.Client(base_url=deployed.gateway.url, timeout=10) as client:
        return check_key(client, ROOM, public_key, headers=headers)


def test_a_rotation_keeps_every_chunk_openable(deployed: Deployment, sim: SimulatorProcess) -> None:
    linked = deployed.with_people(sim, "rotation")
    gateway = linked.gateway
    key_path = gateway.state_dir / "sealing-key.pem"
    audio_key = (gateway.state_dir / "audio-key").read_bytes()
    old = load_key(key_path)
    assert key_check(linked, old.public_key()).state == "verified"

    session_id = gateway.start_session(ROOM, *linked.people)
    spooled = [linked.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq) for seq in range(3)]
    assert linked.put_chunk(ROOM, session_id, spooled[0]).status_code == 200

    rotated = gateway.cli("keygen", "--force")
    new = load_key(key_path)
    assert key_fingerprint(new.public_key()) != key_fingerprint(old.public_key())
    retired = list((gateway.state_dir / "retired-keys").iterdir())
    assert len(retired) == 1 and str(retired[0]) in rotated.stderr
    assert retired[0].read_bytes() == private_key_to_pem(old)
    assert stat.S_IMODE(retired[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(retired[0].parent.stat().st_mode) == 0o700
    assert (gateway.state_dir / "audio-key").read_bytes() == audio_key, "audio key untouched"

    # The running gateway serves the new key at once: the device's check says so.
    assert key_check(linked, new.public_key()).state == "verified"
    behind = key_check(linked, old.public_key())
    assert behind.state == "mismatch"
    assert behind.gateway_fingerprint == key_fingerprint(new.public_key())

    # The spool's chunks, sealed to the old key, are taken; a new one sealed to the new key.
    assert linked.put_chunk(ROOM, session_id, spooled[1]).status_code == 200
    fresh = linked.seal(ROOM, session_id, 3, tone(1.0, seed=3), 3.0, new.public_key())
    assert linked.put_chunk(ROOM, session_id, fresh).status_code == 200

    # After a restart too (the retired key is read from disk).
    gateway.kill()
    gateway.start()
    assert linked.put_chunk(ROOM, session_id, spooled[2]).status_code == 200
    stranger = generate_private_key().public_key()
    foreign = linked.seal(ROOM, session_id, 4, tone(1.0), 4.0, stranger)
    assert_problem(linked.put_chunk(ROOM, session_id, foreign), 422, "wrong_key")

    assert gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    chunks = [*spooled, fresh]
    assert linked.close(ROOM, session_id, chunks).status_code == 200
    done = gateway.wait_for_state(session_id, "notes_ready", timeout=60)
    assert "chunk_left_out" not in steps(done), "assembly opened every chunk"
    ours = [
        s for s in sim.state()["session_details"].values()
        if s["session_external_id"] == session_id
    ]  # fmt: skip
    assert len(ours) == 1 and ours[0]["audio_duration_s"] == pytest.approx(4.0, abs=0.1)
    assert "Traceback" not in gateway.log()
