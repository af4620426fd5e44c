"""`room-gateway serve` refuses every config `config validate` rejects (issue 10): above all
a real Blueprint base URL with the simulator's public default secret, with which forged
webhooks would verify. A real process; it must exit at once, never listen.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import ROOM_GATEWAY
from tests.support.processes import free_port, wait_for_http

pytestmark = pytest.mark.timeout(120)


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    try:
        return subprocess.run(
            [ROOM_GATEWAY, *args], env={**clean, **env}, capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`room-gateway {' '.join(args)}` started: {env}") from None


def state(tmp_path: Path, **env: str) -> dict[str, str]:
    return {
        "ROOM_GATEWAY_STATE_DIR": str(tmp_path / "state"),
        "ROOM_GATEWAY_HTTP__HOST": "127.0.0.1",
        "ROOM_GATEWAY_HTTP__PORT": str(free_port()),
        **env,
    }


REAL = "https://api.blueprint.example"
CASES = {
    "default credentials for a real Blueprint": {"ROOM_GATEWAY_BLUEPRINT__BASE_URL": REAL},
    "only the secret left at its default": {
        "ROOM_GATEWAY_BLUEPRINT__BASE_URL": REAL,
        "ROOM_GATEWAY_BLUEPRINT__API_KEY": "a-real-key",
        "ROOM_GATEWAY_BLUEPRINT__CLIENT_ID": "a-real-client",
    },
    "plain http to another host": {
        "ROOM_GATEWAY_BLUEPRINT__BASE_URL": "http://api.blueprint.example",
        "ROOM_GATEWAY_BLUEPRINT__API_KEY": "a-real-key",
        "ROOM_GATEWAY_BLUEPRINT__CLIENT_ID": "a-real-client",
        "ROOM_GATEWAY_BLUEPRINT__CLIENT_SECRET": "a-real-secret",
    },
    "a relay without its password": {"ROOM_GATEWAY_MQTT__BROKER_URL": "mqtt://127.0.0.1:1"},
}


@pytest.mark.parametrize("case", CASES)
def test_serve_refuses_what_config_validate_rejects(tmp_path: Path, case: str) -> None:
    env = state(tmp_path, **CASES[case])
    validated = run(["config", "validate"], env)
    assert validated.returncode == 2, validated
    rejected = [line.removeprefix("room-gateway: ") for line in validated.stderr.splitlines()]

    served = run(["serve"], env)
    assert served.returncode == 2, served.stderr
    assert "Traceback" not in served.stderr
    lines = [line.removeprefix("room-gateway: ") for line in served.stderr.splitlines()]
    assert lines[-1] == "serve: not started (room-gateway config validate)"
    assert lines[:-1] == [f"serve: {line}" for line in rejected]
    assert not (tmp_path / "state" / "gateway.db").exists(), "nothing was opened"


def test_serve_still_starts_on_the_simulators_defaults(tmp_path: Path) -> None:
    """The simulator on this host with its defaults is what the demo and the tests run."""
    env = state(tmp_path, ROOM_GATEWAY_BLUEPRINT__BASE_URL="http://127.0.0.1:9")
    assert run(["config", "validate"], env).returncode == 0
    process = subprocess.Popen(
        [ROOM_GATEWAY, "serve"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{env['ROOM_GATEWAY_HTTP__PORT']}/healthz", timeout=20)
    finally:
        process.terminate()
        process.wait(timeout=20)
