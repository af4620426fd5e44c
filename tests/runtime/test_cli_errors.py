"""OS errors end as one line naming the path and the fix, for every command.

The README's gateway install once crashed with a PermissionError traceback in `keygen`,
`broker-config` and `partner-token create` when the state directory could not be
created. Here the state directory lies in a directory the command may not write: as
root, by dropping the capabilities that let root ignore file permissions (setpriv).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
GATEWAY_COMMANDS = (
    ["keygen"],
    ["broker-config"],
    ["partner-token", "create", "--label", "ehr"],
    ["partner-token", "list"],
    ["device", "add", "room-1"],
    ["device", "list"],
    ["room", "add", "room-1"],
    ["jobs", "list"],
)


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` without the power to ignore file modes (a no-op when not root)."""
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's file capabilities")
    drop = "-dac_override,-dac_read_search,-fowner"
    return [setpriv, f"--bounding-set={drop}", "--inh-caps=-all", "--", *argv]


def room_gateway(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``room-gateway COMMAND``, unprivileged."""
    return subprocess.run(
        unprivileged([str(BIN / "room-gateway"), *command]),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def locked_dir(tmp_path: Path) -> Path:
    """A directory this process may read but not write into."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    if os.geteuid() == 0:
        os.chown(locked, 65534, 65534)  # nobody's
    else:
        locked.chmod(0o555)
    return locked


@pytest.mark.parametrize("command", GATEWAY_COMMANDS, ids=" ".join)
def test_gateway_commands_name_the_path_and_the_fix(command: list[str], locked_dir: Path) -> None:
    state = locked_dir / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    env["ROOM_GATEWAY_STATE_DIR"] = str(state)
    result = room_gateway(command, env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"room-gateway: {state}: permission denied: "), lines[0]
    assert "sudo -u room-gateway" in lines[0] and f"ls -ld {locked_dir}" in lines[0]


def test_an_os_error_line_for_a_full_disk_and_a_file_in_the_way(tmp_path: Path) -> None:
    from runtime.cli import os_error_line

    full = OSError(28, "No space left on device", "/var/lib/room-gateway/gateway.db")
    assert os_error_line(full) == (
        "/var/lib/room-gateway/gateway.db: no space left on device: the disk is full:"
        " free space (df -h), then try again"
    )
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    env["ROOM_GATEWAY_STATE_DIR"] = str(blocker / "state")
    result = subprocess.run(
        [str(BIN / "room-gateway"), "keygen"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a directory: a part of the path is a file" in result.stderr


def test_a_credentials_directory_it_may_not_enter_counts_as_none(tmp_path: Path) -> None:
    """`sudo -u room-gateway room-gateway keygen` on an installed gateway: the installed
    credentials (/etc/room-audio/credentials, 0700 root) are not for this user to read,
    so they count as absent, as they do when the file itself is unreadable."""
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(credentials, 65534, 65534)  # nobody's
    else:
        credentials.chmod(0o000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    env["ROOM_GATEWAY_STATE_DIR"] = str(tmp_path / "state")
    env["ROOM_AUDIO_CREDENTIALS"] = str(credentials)
    result = room_gateway(["keygen"], env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
