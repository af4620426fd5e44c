"""Everything the gateway creates is private to its user whatever the umask (issue 10):
with a permissive umask (0022, what a shell outside systemd has), a deployment made the
way a technician makes it (keygen, broker-config, device add, serve) and a session whose
audio went through ingest, assembly and upload leaves no file or directory another user
may read, under the state directory, the broker's directory or a device's bundle.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import SimulatorProcess
from tests.gateway.deployment import Deployment, tone
from tests.support.eventually import eventually

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
ROOM = "room-1"
# Written by the test's processes, not by the gateway: its output (systemd's journal in
# production) and mosquitto's own files (its unit has UMask=0077).
TEST_FILES = {"gateway.log", "mosquitto.pid", "mosquitto.log"}


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The test's children (every room-gateway command) inherit umask 0022."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def shared_entries(root: Path) -> list[str]:
    """Everything under ``root`` (root included) that group or others may use."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.name in TEST_FILES or path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:04o}")
    return found


def test_nothing_the_gateway_creates_is_readable_by_others(
    permissive_umask: None,
    tmp_path: Path,
    sim: SimulatorProcess,
) -> None:
    export = tmp_path / "exported" / "audio"
    deployment = Deployment(tmp_path, sim.url, (ROOM,)).start()
    try:
        sim.set_callback(deployment.gateway.webhook_url)
        deployment.gateway.put_people(*deployment.people)
        session_id = deployment.gateway.start_session(ROOM, *deployment.people)
        chunks = [deployment.seal(ROOM, session_id, n, tone(1.0, seed=n), n) for n in (0, 1)]
        for chunk in chunks:
            assert deployment.put_chunk(ROOM, session_id, chunk).status_code == 200
        assert deployment.gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
        assert deployment.close(ROOM, session_id, chunks).status_code == 200
        deployment.gateway.wait_for_state(session_id, "notes_ready")
        # An operator's export of a device's unclaimed session writes audio in the clear.
        unclaimed = deployment.seal(ROOM, "unclaimed-1", 0, tone(1.0), 0)
        assert deployment.put_chunk(ROOM, "unclaimed-1", unclaimed).status_code == 200
        assert deployment.close(ROOM, "unclaimed-1", [unclaimed]).status_code == 200
        eventually(
            lambda: (
                deployment.gateway.query(
                    "SELECT state FROM ingest_sessions WHERE session_id = 'unclaimed-1'"
                )[0]["state"]
                == "assembled"
            )
        )
        deployment.gateway.cli("device", "unclaimed", ROOM, "--export", str(export))
        assert list(export.glob("unclaimed-1.*")), list(export.iterdir())
    finally:
        deployment.stop()

    shared = [
        *shared_entries(deployment.gateway.state_dir),
        *shared_entries(deployment.broker_dir),
        *shared_entries(tmp_path / "devices"),
        *shared_entries(export.parent),
    ]
    assert shared == [], "readable by others:\n" + "\n".join(shared)
