"""room-gateway config validate as the partner's operator runs it after editing gateway.toml:
a real process, real files (a key from `room-gateway keygen`, TLS files that are not PEM).

Every problem is one line naming the file (or environment variable) and the dotted key,
exit status 2 and no traceback; good settings are one "ok" line and exit status 0.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.gateway.conftest import ROOM_GATEWAY
from tests.support.certs import Pki

SECRET = "an-mqtt-secret-never-printed"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
    clean.pop("CREDENTIALS_DIRECTORY", None)
    done = subprocess.run(
        [ROOM_GATEWAY, *args], env={**clean, **(env or {})}, capture_output=True, text=True
    )
    assert "Traceback" not in done.stderr
    assert SECRET not in done.stdout + done.stderr
    return done


def problems(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines: exit status 2, nothing on stdout."""
    assert (done.returncode, done.stdout) == (2, ""), done
    lines = done.stderr.splitlines()
    assert lines[0].startswith("room-gateway: ")
    return [lines[0].removeprefix("room-gateway: "), *lines[1:]]


def good_config(tmp_path: Path, extra: str = "") -> Path:
    password = tmp_path / "mqtt-password"
    password.write_text(SECRET + "\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\n"
        f'state_dir = "{tmp_path / "state"}"\n'
        "[gateway.http]\nport = 8081\n"
        f'[gateway.mqtt]\nbroker_url = "mqtt://127.0.0.1:1883"\npassword_file = "{password}"\n'
        '[gateway.devices]\ngateway_url = "https://gw.clinic.example"\n'
        'broker_url = "mqtts://gw.clinic.example:8883"\n' + extra
    )
    return config


def test_good_settings_are_one_ok_line_and_create_nothing(tmp_path):
    config = good_config(tmp_path)
    done = run("config", "validate", str(config))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"{config}: ok (database {tmp_path}/state/gateway.db, Blueprint"
        " http://127.0.0.1:8090, listening on 127.0.0.1:8081, sealing key none yet"
        " (room-gateway keygen))\n"
    )
    assert not (tmp_path / "state").exists(), "validating creates nothing"


def test_the_sealing_key_must_load_and_stay_private(tmp_path):
    config = good_config(tmp_path)
    assert run("--config", str(config), "keygen").returncode == 0
    key = tmp_path / "state" / "sealing-key.pem"
    done = run("config", "validate", str(config))
    assert done.returncode == 0 and done.stdout.endswith("sealing key present)\n")
    key.chmod(0o644)
    assert problems(run("config", "validate", str(config))) == [
        f"gateway.toml: gateway.sealing_key_file: {key}: readable by others (mode 0644; it"
        f" opens every room's audio): chmod 600 {key}"
    ]
    key.write_text("not a key\n")
    key.chmod(0o600)
    found = problems(run("config", "validate", str(config)))
    assert len(found) == 1
    assert found[0].startswith(f"gateway.toml: gateway.sealing_key_file: {key}: ")


def test_every_problem_is_one_line(tmp_path):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate\n")
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\n"
        f'state_dir = "{not_pem}/state"\n'
        '[gateway.blueprint]\nbase_url = "http://api.blueprint.example"\n'
        '[gateway.mqtt]\nbroker_url = "mqtts://localhost:8883"\n'
        f'ca_file = "{not_pem}"\n'
        "[gateway.broker]\nport = 8883\nrequire_certificate = true\n"
        f'tls_cert_file = "{not_pem}"\ntls_key_file = "{not_pem}"\n'
    )
    env = {"ROOM_GATEWAY_DEVICES__GATEWAY_URL": "https://gw.example:70000"}
    found = problems(run("config", "validate", str(config), env=env))
    pem = f"{not_pem}: not a usable PEM file"
    expected = [
        f"gateway.toml: gateway.state_dir: {not_pem}/state: {not_pem} is not a directory",
        "gateway.toml: gateway.blueprint.base_url: http://api.blueprint.example: must be"
        " https:// (the credentials go with every call)",
        "gateway.toml: gateway.blueprint.api_key: still the simulator's default (set the"
        " partner credential)",
        "gateway.toml: gateway.blueprint.client_id: still the simulator's default (set the"
        " partner credential)",
        "gateway.toml: gateway.blueprint.client_secret: still the simulator's default (set"
        " the partner credential)",
        "environment ROOM_GATEWAY_DEVICES__GATEWAY_URL: gateway.devices.gateway_url:"
        " https://gw.example:70000: port must be 1..65535",
        f"gateway.toml: gateway.mqtt.ca_file: {pem}",
        f"gateway.toml: gateway.mqtt.password: not set, and {not_pem}/state/mqtt-password"
        " does not exist (run room-gateway broker-config, or set password_file or the"
        " credential gateway-mqtt-password)",
        f"gateway.toml: gateway.broker.tls_cert_file: {pem}",
        "gateway.toml: gateway.mqtt.client_cert_file: not set, but"
        f" broker.require_certificate is on: set it and client_key_file to {not_pem}/state"
        "/mqtt-client.crt and .key (room-gateway broker-config issues them)",
    ]
    for line, want in zip(found, expected, strict=True):  # a PEM line ends with why
        assert line == want or (want.endswith(pem) and line.startswith(f"{want} (")), line


def test_the_relay_must_connect_as_the_broker_listens(tmp_path):
    """broker-config writes a TLS listener (with real, loadable certificates here): the
    relay's plain mqtt:// to that port, and no client certificate when one is required,
    would fail at every connection."""
    pki = Pki.create(tmp_path / "pki")
    config = good_config(
        tmp_path,
        "[gateway.broker]\nport = 1883\nrequire_certificate = true\n"
        f'tls_cert_file = "{pki.server_cert}"\ntls_key_file = "{pki.server_key}"\n',
    )
    assert problems(run("config", "validate", str(config))) == [
        "gateway.toml: gateway.mqtt.broker_url: mqtt://127.0.0.1:1883: the broker listens"
        " with TLS on port 1883 (broker.tls_cert_file): use mqtts://",
        "gateway.toml: gateway.mqtt.client_cert_file: not set, but"
        f" broker.require_certificate is on: set it and client_key_file to {tmp_path}/state"
        "/mqtt-client.crt and .key (room-gateway broker-config issues them)",
    ]


def test_file_wins_over_config_which_wins_over_the_environment(tmp_path):
    good = good_config(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway.http]\nprot = 8081\n[gateway.jobs]\nconcurrency = 0\n")
    env = {"ROOM_GATEWAY_CONFIG": str(broken)}
    both = [
        "broken.toml: gateway.http.prot: unknown key (did you mean port?)",
        "broken.toml: gateway.jobs.concurrency: must be 1..64 (got 0)",
    ]
    assert problems(run("config", "validate", env=env)) == both, "the environment's file"
    assert run("--config", str(good), "config", "validate", env=env).returncode == 0
    done = run("--config", str(broken), "config", "validate", str(good), env=env)
    assert done.stdout.startswith(f"{good}: ok ("), "FILE wins over --config"
    assert problems(run("--config", str(good), "config", "validate", str(broken))) == both


def test_device_addresses_must_reach_a_room_and_not_in_clear(tmp_path):
    """What devices are given: a wildcard or plaintext to another host is a problem (and
    `device add` refuses it); loopback or nothing, a warning."""
    config = good_config(tmp_path)
    env = {
        "ROOM_GATEWAY_DEVICES__GATEWAY_URL": "http://0.0.0.0:8080",
        "ROOM_GATEWAY_DEVICES__BROKER_URL": "mqtt://10.0.0.5:1883",
    }
    found = problems(run("config", "validate", str(config), env=env))
    assert found == [
        "environment ROOM_GATEWAY_DEVICES__GATEWAY_URL: gateway.devices.gateway_url:"
        " http://0.0.0.0:8080: 0.0.0.0 is a wildcard listening address; devices cannot"
        " connect to it: give the host name or address they reach",
        "environment ROOM_GATEWAY_DEVICES__BROKER_URL: gateway.devices.broker_url:"
        " mqtt://10.0.0.5:1883: plaintext to another host: the device's MQTT password would"
        " travel in clear; use mqtts:// (or set devices.allow_plaintext on a network you"
        " trust entirely)",
    ]
    env = {"ROOM_GATEWAY_DEVICES__GATEWAY_URL": "", "ROOM_GATEWAY_DEVICES__BROKER_URL": ""}
    done = run("config", "validate", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "warning: environment ROOM_GATEWAY_DEVICES__GATEWAY_URL: gateway.devices.gateway_url:"
        " not set: the URL room devices reach this gateway at, through its TLS proxy (e.g."
        " https://gateway.clinic.example)",
        "warning: gateway.toml: gateway.mqtt.broker_url: mqtt://127.0.0.1:1883: loopback:"
        " only a device on this host can reach it",
    ]
    # device add refuses what validate calls a problem, before issuing anything.
    assert run("--config", str(config), "keygen").returncode == 0
    added = run("--config", str(config), "device", "add", "room-1", env=env)
    assert added.returncode == 2 and added.stdout == ""
    assert added.stderr.startswith(
        "room-gateway: device add: gateway.devices.gateway_url: not set: "
    )
    listed = run("--config", str(config), "device", "list")
    assert "room-1" not in listed.stdout
    env["ROOM_GATEWAY_DEVICES__GATEWAY_URL"] = "http://gateway.clinic.example"
    env["ROOM_GATEWAY_DEVICES__ALLOW_PLAINTEXT"] = "true"
    added = run("--config", str(config), "device", "add", "room-1", env=env)
    assert added.returncode == 0, added.stderr
    assert 'gateway_url = "http://gateway.clinic.example"' in added.stdout
    assert "device add: warning: gateway.mqtt.broker_url: mqtt://127.0.0.1:1883: loopback" in (
        added.stderr
    )
