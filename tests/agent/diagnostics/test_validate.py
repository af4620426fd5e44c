"""room-agent config validate as a technician runs it after editing a device's config file.

Every problem is one line naming the file (or environment variable) and the dotted key,
exit status 2 and no traceback; a good file is one "ok" line and exit status 0.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.envelope import generate_private_key, public_key_to_text
from tests.support.alsa import write_asound_conf, write_raw

ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")
PUBLIC_KEY = public_key_to_text(generate_private_key().public_key())


@pytest.fixture
def env():
    return {k: v for k, v in os.environ.items() if not k.startswith("ROOM_AGENT_")}


def validate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ROOM_AGENT, *args], env=env, capture_output=True, text=True, timeout=30)


def good_config(tmp_path: Path, extra: str = "") -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        "[agent]\n"
        'device_id = "room-7"\n'
        f'state_dir = "{tmp_path / "state" / "room-agent"}"\n'
        f'gateway_public_key = "{PUBLIC_KEY}"\n'
        "[agent.audio]\n"
        'device = "testmic"\n'
        "vad_mode = 2\n" + extra
    )
    return config


def problems(done: subprocess.CompletedProcess) -> list[str]:
    """The problem lines: exit status 2, nothing on stdout, no traceback."""
    assert done.returncode == 2, done
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("room-agent: ")
    return [lines[0].removeprefix("room-agent: "), *lines[1:]]


def test_a_good_file_is_ok_whichever_way_it_is_named(tmp_path, env):
    config = good_config(tmp_path)
    for args, environment in (
        (("config", "validate", str(config)), env),
        (("--config", str(config), "config", "validate"), env),
        (("config", "validate"), {**env, "ROOM_AGENT_CONFIG": str(config)}),
    ):
        done = validate(environment, *args)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout.startswith(f"{config}: ok (device room-7, microphone 'testmic',")
    assert not (tmp_path / "state").exists(), "validating creates nothing"


def test_the_file_argument_wins_over_config_and_the_environment(tmp_path, env):
    config = good_config(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text("[agent.audio]\nvad_mode = 7\n")
    env["ROOM_AGENT_CONFIG"] = str(broken)
    done = validate(env, "--config", str(broken), "config", "validate", str(config))
    assert done.returncode == 0, done.stderr


def test_a_wrong_key_names_the_file_and_the_key(tmp_path, env):
    config = good_config(tmp_path, "hangover = 300\n")
    assert problems(validate(env, "config", "validate", str(config))) == [
        "agent.toml: agent.audio.hangover: unknown key (did you mean hangover_ms?)"
    ]


def test_wrong_types_and_ranges_are_one_line_each(tmp_path, env):
    config = good_config(tmp_path, 'block_ms = "thirty"\n').read_text()
    config = config.replace("vad_mode = 2", "vad_mode = 7")
    (tmp_path / "agent.toml").write_text(config)
    assert problems(validate(env, "config", "validate", str(tmp_path / "agent.toml"))) == [
        "agent.toml: agent.audio.block_ms: must be a valid integer, unable to parse string"
        " as an integer (got 'thirty')",
        "agent.toml: agent.audio.vad_mode: must be 0..3 (got 7)",
    ]


def test_what_loads_but_would_fail_at_start_is_reported_too(tmp_path, env):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    config = good_config(tmp_path).read_text()
    config = config.replace(PUBLIC_KEY, "AAAA")
    config = config.replace(str(tmp_path / "state"), str(not_pem))
    config += f'[agent.link]\ngateway_url = "https://gw.example.org"\nca_file = "{not_pem}"\n'
    (tmp_path / "agent.toml").write_text(config)
    found = problems(validate(env, "config", "validate", str(tmp_path / "agent.toml")))
    assert found[:3] == [
        "agent.toml: agent.gateway_public_key: public key must be 32 bytes (got 3)",
        f"agent.toml: agent.state_dir: {not_pem}/room-agent: {not_pem} is not a directory",
        "agent.toml: agent.link.ingest_token: not set (needed with link.gateway_url; give it"
        " as ingest_token_file, ROOM_AGENT_LINK__INGEST_TOKEN or the credential ingest-token)",
    ]
    assert found[3].startswith(f"agent.toml: agent.link.ca_file: {not_pem}: not a usable PEM")
    assert len(found) == 4


def test_a_value_from_the_environment_is_blamed_on_the_environment(tmp_path, env):
    env["ROOM_AGENT_GATEWAY_PUBLIC_KEY"] = "not base64 !!"
    assert problems(validate(env, "config", "validate", str(good_config(tmp_path)))) == [
        "environment ROOM_AGENT_GATEWAY_PUBLIC_KEY: agent.gateway_public_key:"
        " public key is not base64"
    ]


def test_a_missing_key_or_file_is_reported(tmp_path, env):
    config = good_config(tmp_path).read_text().replace(f'"{PUBLIC_KEY}"', '""')
    (tmp_path / "agent.toml").write_text(config)
    assert problems(validate(env, "config", "validate", str(tmp_path / "agent.toml"))) == [
        "agent.toml: agent.gateway_public_key: not set (required to record: audio is sealed to it)"
    ]
    missing = tmp_path / "nowhere.toml"
    assert problems(validate(env, "config", "validate", str(missing))) == [
        f"{missing}: no such file"
    ]


def test_devices_checks_the_microphone_is_there(tmp_path, env):
    raw = write_raw(tmp_path / "mic.raw", np.zeros(1600, dtype=np.int16))
    env.update(write_asound_conf(tmp_path / "asound.conf", raw))
    config = good_config(tmp_path)
    done = validate(env, "config", "validate", "--devices", str(config))
    assert done.returncode == 0, done.stderr
    env["ROOM_AGENT_AUDIO__DEVICE"] = "respeaker"
    assert problems(validate(env, "config", "validate", "--devices", str(config))) == [
        "environment ROOM_AGENT_AUDIO__DEVICE: agent.audio.device: no input device matches"
        " 'respeaker' (input devices: 'testmic', 'default')"
    ]
    assert validate(env, "config", "validate", str(config)).returncode == 0, "only --devices"
