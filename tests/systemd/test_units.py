"""The shipped units are valid and hardened: systemd-analyze verify and security."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
INSTALLED_BIN = "/opt/room-audio/venv/bin/"
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed"
)


@pytest.fixture(params=["room-agent.service", "room-gateway.service"])
def unit(request, tmp_path) -> Path:
    """The unit as shipped, with ExecStart pointing at this checkout's console scripts,
    because verify insists that the executable exists."""
    text = (UNITS / request.param).read_text()
    assert INSTALLED_BIN in text
    copy = tmp_path / request.param
    copy.write_text(text.replace(INSTALLED_BIN, str(Path(sys.executable).parent) + "/"))
    return copy


def verify(unit: Path) -> None:
    command = ["systemd-analyze", "verify", str(unit)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert unit.name not in result.stderr, result.stderr


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    print(f"{unit.name}: exposure {match.group(1)}")
    return float(match.group(1))


def test_verify(unit):
    verify(unit)


def test_security_exposure(unit):
    assert exposure(unit) <= MAX_EXPOSURE


def test_agent_keeps_sound_devices():
    text = (UNITS / "room-agent.service").read_text()
    assert "DeviceAllow=char-alsa rw" in text
    assert "DevicePolicy=closed" in text
    assert not re.search(r"^PrivateDevices=", text, re.M), "PrivateDevices= would hide /dev/snd"


@pytest.mark.parametrize("name", ["room-agent.service", "room-gateway.service"])
def test_required_directives(name):
    text = (UNITS / name).read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "StartLimitBurst=",
        "StateDirectory=",
        "LoadCredential=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        "UMask=0077",
        "User=",
    ):
        assert directive in text, f"{name} lacks {directive.strip()}"


DEBIAN_MOSQUITTO = Path("/lib/systemd/system/mosquitto.service")


@pytest.mark.skipif(not DEBIAN_MOSQUITTO.exists(), reason="Debian's mosquitto not installed")
def test_mosquitto_drop_in(tmp_path):
    """Debian's mosquitto.service with our drop-in applied: valid, and as hardened."""
    drop_in = (UNITS / "mosquitto-room-audio.conf").read_text()
    # Debian's Documentation=man:... makes verify run man, absent from minimal systems.
    debian = re.sub(r"^Documentation=.*\n", "", DEBIAN_MOSQUITTO.read_text(), flags=re.M)
    merged = debian.replace("\n[Install]", drop_in.split("[Service]", 1)[1] + "\n[Install]")
    unit = tmp_path / "mosquitto.service"
    unit.write_text(merged)
    verify(unit)
    assert exposure(unit) <= MAX_EXPOSURE
