"""room-gateway's commands as a technician runs them: real processes, real files."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from gateway.keys import load_key
from protocol.envelope import open_chunk, public_key_from_text
from tests.gateway.conftest import (
    ROOM_GATEWAY,
    GatewayFactory,
    GatewayProcess,
    SimulatorProcess,
)
from tests.support.processes import Service, free_port, wait_for_http
from tests.support.sealed_chunk import AUDIO, sealed_chunk

pytestmark = pytest.mark.timeout(120)


def run(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    result = subprocess.run(
        [ROOM_GATEWAY, *args], env={**clean, **env}, capture_output=True, text=True, timeout=60
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_keygen_writes_a_private_key_once_and_prints_the_public_key(tmp_path: Path) -> None:
    env = {"ROOM_GATEWAY_STATE_DIR": str(tmp_path / "state")}
    first = run("keygen", env=env, check=True)
    key_file = tmp_path / "state" / "sealing-key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    public_text = first.stdout.strip()
    # The printed key is the one devices seal to: a chunk sealed to it opens with the file.
    sealed = sealed_chunk(public_key_from_text(public_text))
    assert open_chunk(sealed, load_key(key_file)).audio == AUDIO

    again = run("keygen", env=env, check=True)
    assert again.stdout.strip() == public_text and "exists" in again.stderr
    replaced = run("keygen", "--force", env=env, check=True)
    assert replaced.stdout.strip() != public_text
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    elsewhere = tmp_path / "keys" / "gateway.pem"
    custom = run("keygen", env={**env, "ROOM_GATEWAY_SEALING_KEY_FILE": str(elsewhere)})
    assert custom.returncode == 0 and elsewhere.exists()


def test_config_validate_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway.http]\nport = 8081\n[gateway.blueprint]\nclient_secert = "x"\n')
    bad = run("--config", str(config), "config", "validate", env={})
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "room-gateway: gateway.toml: gateway.blueprint.client_secert: unknown key"
        " (did you mean client_secret?)"
    )
    config.write_text('[gateway.http]\nport = 8081\n[gateway.blueprint]\nclient_secret = "s3"\n')
    good = run("config", "validate", env={"ROOM_GATEWAY_CONFIG": str(config)}, check=True)
    assert "ok" in good.stdout and "8081" in good.stdout and "s3" not in good.stdout
    env_bad = run("config", "validate", env={"ROOM_GATEWAY_HTTP__PORT": "eighty"})
    assert env_bad.returncode == 2
    assert "environment ROOM_GATEWAY_HTTP__PORT: gateway.http.port" in env_bad.stderr


def test_room_add_checks_ids(tmp_path: Path) -> None:
    env = {"ROOM_GATEWAY_STATE_DIR": str(tmp_path)}
    assert "room room-a added" in run("room", "add", "room-a", env=env, check=True).stdout
    assert "exists already" in run("room", "add", "room-a", env=env, check=True).stdout
    bad = run("room", "add", "room b", env=env)
    assert bad.returncode == 2 and "must be 1-64 letters" in bad.stderr
    assert "room-a" in run("room", "list", env=env, check=True).stdout


def test_serve_on_the_start_keys_from_the_environment_only(
    tmp_path: Path, blueprint_sim: SimulatorProcess
) -> None:
    port = free_port()
    env = {
        "ROOM_GATEWAY_STATE_DIR": str(tmp_path),
        "ROOM_GATEWAY_HTTP__HOST": "127.0.0.1",
        "ROOM_GATEWAY_HTTP__PORT": str(port),
        "ROOM_GATEWAY_BLUEPRINT__BASE_URL": blueprint_sim.url,
        "ROOM_GATEWAY_BLUEPRINT__API_KEY": "sim-api-key",
        "ROOM_GATEWAY_BLUEPRINT__CLIENT_ID": "sim-client",
        "ROOM_GATEWAY_BLUEPRINT__CLIENT_SECRET": "sim-secret",
    }
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    service = Service([ROOM_GATEWAY, "serve"], tmp_path / "serve.log", env={**clean, **env})
    service.env = {**clean, **env}
    with service:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=20)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz").json()
        assert ready["checks"]["blueprint"]["status"] == "ok"  # the keys from the env work
        assert ready["status"] == "degraded"  # only the sealing key is missing
        assert (tmp_path / "gateway.db").exists()
        # SIGTERM: a clean shutdown; uvicorn then re-raises the signal, as systemd expects.
        assert service.stop() in (0, -15)
    log = service.log()
    assert "Application shutdown complete" in log
    assert "sim-secret" not in log and "sim-api-key" not in log


def test_serve_reports_startup_problems_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"ROOM_GATEWAY_STATE_DIR": str(tmp_path), "ROOM_GATEWAY_HTTP__PORT": str(port)}
        busy = run("serve", env=env)
    assert busy.returncode == 2
    assert busy.stderr.strip().splitlines()[-1] == (
        f"room-gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in busy.stderr and "gateway started" not in busy.stderr

    import sqlite3

    with sqlite3.connect(tmp_path / "gateway.db") as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (42)")
    newer = run("serve", env=env)
    assert newer.returncode == 2 and "schema version 42 is newer" in newer.stderr
    assert "Traceback" not in newer.stderr


def test_attach_audio_by_command_completes_the_session(
    sim: SimulatorProcess, gateway_factory: GatewayFactory, flac_audio: Path
) -> None:
    gateway: GatewayProcess = gateway_factory(ROOM_GATEWAY_TESTING__AUDIO_ENDPOINT="false")
    gateway.cli("room", "add", "room-1")
    sim.set_callback(gateway.webhook_url)
    gateway.put_people("clin-cli", "client-cli")
    session_id = gateway.start_session("room-1", "clin-cli", "client-cli")
    attached = gateway.cli("session", "attach-audio", session_id, str(flac_audio))
    assert "upload queued" in attached.stdout
    gateway.wait_for_state(session_id, "notes_ready")
    # Kept encrypted in the store (every replica reads it there), not as a file.
    parts = gateway.query("SELECT data FROM audio_parts WHERE session_id = ?", session_id)
    assert parts and flac_audio.read_bytes()[:64] not in b"".join(bytes(p[0]) for p in parts)
    assert not list(gateway.state_dir.rglob("*.flac"))
    key = gateway.state_dir / "audio-key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    uploaded = [s for s in sim.state()["session_details"].values()
                if s["session_external_id"] == session_id]  # fmt: skip
    assert uploaded[0]["audio_bytes"] == flac_audio.stat().st_size
    again = gateway.cli("session", "attach-audio", session_id, str(flac_audio), check=False)
    assert again.returncode == 2 and "notes_ready" in again.stderr
    unknown = gateway.cli("session", "attach-audio", "ses_nope", str(flac_audio), check=False)
    assert unknown.returncode == 2 and "session ses_nope not found" in unknown.stderr


def test_serve_tells_systemd_it_is_ready_and_alive(
    tmp_path: Path, blueprint_sim: SimulatorProcess
) -> None:
    """Type=notify and WatchdogSec= in the unit: READY=1 once serving, then WATCHDOG=1."""
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket:
        notify_socket.bind(address)
        notify_socket.settimeout(20)
        port = free_port()
        env = {
            "ROOM_GATEWAY_STATE_DIR": str(tmp_path),
            "ROOM_GATEWAY_HTTP__PORT": str(port),
            "ROOM_GATEWAY_BLUEPRINT__BASE_URL": blueprint_sim.url,
            "NOTIFY_SOCKET": address,
            "WATCHDOG_USEC": "200000",
        }
        clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
        service = Service([ROOM_GATEWAY, "serve"], tmp_path / "serve.log")
        service.env = {**clean, **env}
        with service:
            messages = [notify_socket.recv(256).decode() for _ in range(3)]
            assert sorted(set(messages)) == ["READY=1", "WATCHDOG=1"], messages
            assert messages.count("READY=1") == 1
            assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
