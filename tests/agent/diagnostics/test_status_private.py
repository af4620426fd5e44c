"""Everything the agent creates is private to its user whatever the umask: status.json,
the recorder's state, the spool and its journals hold session ids and (sealed) audio.

Outside systemd (whose unit sets UMask=0077) a technician's shell has umask 0022: the
files must still not be readable by anyone else. A real `room-agent record` and a real
`room-agent run`, started with umask 0022.
"""

import os
import stat

import pytest

from tests.agent.device_setup import device_env, room_agent, start_agent, wait_for_snapshot
from tests.support.speech import make_session

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def open_umask():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def public_entries(root) -> list[str]:
    """Paths under ``root`` (itself included) that anyone but the owner may read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def test_status_file_state_and_spool_are_private_under_umask_0022(tmp_path, open_umask):
    env = device_env(tmp_path)  # record only: no broker, no gateway
    wav = make_session(tmp_path / "session.wav", 6, 20, seed=3).path
    done = room_agent(
        {**env, "ROOM_AGENT_AUDIO__MAX_CHUNK_S": "2"},
        *("record", "--input", str(wav), "--until-eof", "--session", "private-1"),
    )
    assert done.returncode == 0, done.stderr
    agent = start_agent(tmp_path, env)
    try:
        wait_for_snapshot(tmp_path, lambda s: s.pid == agent.pid)
        state = tmp_path / "state"
        assert (state / "status.json").exists()
        assert list((state / "spool" / "sessions").glob("*/*.chunk")), "chunks are spooled"
        assert public_entries(state) == []
        assert agent.stop(30) == 0
    finally:
        agent.kill()
    assert public_entries(tmp_path / "state") == []
