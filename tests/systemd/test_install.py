"""scripts/install.sh, staged into a temporary root (DESTDIR): files, modes, configs."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def install(role: str, destdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESTDIR": str(destdir), "SKIP_VENV": "1"}
    return subprocess.run(
        [str(ROOT / "scripts" / "install.sh"), role], capture_output=True, text=True, env=env
    )


@pytest.mark.parametrize("role", ["agent", "gateway"])
def test_staged_install(tmp_path, role):
    result = install(role, tmp_path)
    assert result.returncode == 0, result.stderr
    config = tmp_path / "etc/room-audio" / f"{role}.toml"
    credentials = tmp_path / "etc/room-audio/credentials"
    unit = tmp_path / "etc/systemd/system" / f"room-{role}.service"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o700
    # The README's next steps (keygen, broker-config, device add) write there at once.
    state = tmp_path / "var/lib" / f"room-{role}"
    assert state.is_dir() and stat.S_IMODE(state.stat().st_mode) == 0o700
    assert unit.read_text() == (ROOT / "systemd" / unit.name).read_text()
    assert f'state_dir = "/var/lib/room-{role}"' in config.read_text()
    # `sudo room-agent enroll ...`, as `device add` prints it: sudo's PATH has /usr/local/bin.
    command = tmp_path / "usr/local/bin" / f"room-{role}"
    assert os.readlink(command) == f"/opt/room-audio/venv/bin/room-{role}"
    tables = [line for line in config.read_text().splitlines() if line.startswith("[")]
    assert tables and all(t.strip("[]").split(".")[0] == role for t in tables)

    validate = subprocess.run(
        [str(BIN / f"room-{role}"), "--config", str(config), "config", "validate"],
        capture_output=True,
        text=True,
    )
    if role == "gateway":
        assert validate.returncode == 0, validate.stderr
        drop_in = tmp_path / "etc/systemd/system/mosquitto.service.d/room-audio.conf"
        assert drop_in.read_text() == (ROOT / "systemd/mosquitto-room-audio.conf").read_text()
    else:  # a device has no gateway key until it is provisioned, and says so
        assert validate.returncode == 2
        assert "agent.gateway_public_key" in validate.stderr


def test_existing_config_is_kept(tmp_path):
    assert install("agent", tmp_path).returncode == 0
    config = tmp_path / "etc/room-audio/agent.toml"
    config.write_text('[agent]\ndevice_id = "room-7"\n')
    again = install("agent", tmp_path)
    assert again.returncode == 0 and "keeping the existing" in again.stdout
    assert config.read_text() == '[agent]\ndevice_id = "room-7"\n'


def test_unknown_role(tmp_path):
    result = install("broker", tmp_path)
    assert result.returncode == 2 and "usage" in result.stderr
