"""Gateway settings: the environment alone suffices, secrets come from the environment,
a file or a systemd credential and never show, and mistakes name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import (
    API_KEY_CREDENTIAL,
    CLIENT_SECRET_CREDENTIAL,
    GatewaySettings,
    load_gateway_settings,
)
from runtime.settings import ConfigError

START_KEYS = {
    "ROOM_GATEWAY_STATE_DIR": "/srv/gw",
    "ROOM_GATEWAY_HTTP__HOST": "0.0.0.0",
    "ROOM_GATEWAY_HTTP__PORT": "8080",
    "ROOM_GATEWAY_BLUEPRINT__BASE_URL": "https://api.staging.blueprint.ai/v2",
    "ROOM_GATEWAY_BLUEPRINT__API_KEY": "env-api-key-value",
    "ROOM_GATEWAY_BLUEPRINT__CLIENT_ID": "partner-client",
    "ROOM_GATEWAY_BLUEPRINT__CLIENT_SECRET": "env-client-secret-value",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ROOM_GATEWAY_") or name == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(name)


def test_the_start_keys_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in START_KEYS.items():
        monkeypatch.setenv(name, value)
    settings = load_gateway_settings(None)
    assert settings.state_dir == Path("/srv/gw")
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 8080)
    assert settings.blueprint.base_url == "https://api.staging.blueprint.ai/v2"
    assert settings.blueprint.api_key.get_secret_value() == "env-api-key-value"
    assert settings.blueprint.client_id == "partner-client"
    assert settings.blueprint.client_secret.get_secret_value() == "env-client-secret-value"
    assert settings.database_path == Path("/srv/gw/gateway.db")
    assert settings.sealing_key_path == Path("/srv/gw/sealing-key.pem")
    shown = repr(settings) + str(settings.model_dump())
    assert "env-api-key-value" not in shown and "env-client-secret-value" not in shown


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway.http]\nport = 9000\nhost = "127.0.0.2"\n')
    monkeypatch.setenv("ROOM_GATEWAY_HTTP__PORT", "9100")
    settings = load_gateway_settings(config)
    assert (settings.http.host, settings.http.port) == ("127.0.0.2", 9100)
    monkeypatch.setenv("ROOM_GATEWAY_CONFIG", str(config))
    monkeypatch.delenv("ROOM_GATEWAY_HTTP__PORT")
    assert load_gateway_settings(None).http.port == 9000


def test_defaults_are_the_embedded_simulator() -> None:
    settings = GatewaySettings()
    assert settings.blueprint.base_url == "http://127.0.0.1:8090"
    assert settings.blueprint.api_key.get_secret_value() == "sim-api-key"
    assert settings.blueprint.client_secret.get_secret_value() == "sim-secret"
    assert settings.testing.audio_endpoint is False


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("file-api-key\n")
    (tmp_path / "secret").write_text("file-client-secret")
    settings = GatewaySettings(
        blueprint={"api_key_file": tmp_path / "key", "client_secret_file": tmp_path / "secret"}
    )
    assert settings.blueprint.api_key.get_secret_value() == "file-api-key"
    assert settings.blueprint.client_secret.get_secret_value() == "file-client-secret"


def test_secrets_from_systemd_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / API_KEY_CREDENTIAL).write_text("credential-api-key")
    (tmp_path / CLIENT_SECRET_CREDENTIAL).write_text("credential-secret")
    (tmp_path / "partner-callback-secret").write_text("whsec_Y2FsbGJhY2s=")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("ROOM_GATEWAY_PARTNER__CALLBACK_URL", "https://ehr.example/hook")
    settings = load_gateway_settings(None)
    assert settings.blueprint.api_key.get_secret_value() == "credential-api-key"
    assert settings.blueprint.client_secret.get_secret_value() == "credential-secret"
    assert settings.partner.callback_secret is not None
    # A value set explicitly wins over the credential.
    monkeypatch.setenv("ROOM_GATEWAY_BLUEPRINT__API_KEY", "explicit")
    assert load_gateway_settings(None).blueprint.api_key.get_secret_value() == "explicit"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        (
            "[gateway.http]\nprot = 1\n",
            "gateway.toml: gateway.http.prot: unknown key (did you mean port?)",
        ),
        (
            "[gateway.http]\nport = 70000\n",
            "gateway.toml: gateway.http.port: must be 1..65535 (got 70000)",
        ),
        (
            "[gateway]\nstate_dri = '/x'\n",
            "gateway.toml: gateway.state_dri: unknown key (did you mean state_dir?)",
        ),
        (
            "[gateway.blueprint]\nbase_url = 'ftp://x'\n",
            "gateway.toml: gateway.blueprint.base_url: must be an http:// or https:// URL",
        ),
        (
            "[gateway.jobs]\nconcurrency = 0\n",
            "gateway.toml: gateway.jobs.concurrency: must be 1..64 (got 0)",
        ),
        ("[gatway]\n", "gateway.toml: gatway: unknown table (did you mean gateway?)"),
    ],
)
def test_mistakes_name_the_key_and_the_file(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as error:
        load_gateway_settings(config)
    assert str(error.value).startswith(expected), str(error.value)


def test_secret_problems_are_reported_without_the_secret(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"[gateway.blueprint]\napi_key = 'the-key-itself'\napi_key_file = '{tmp_path / 'key'}'\n"
    )
    with pytest.raises(ConfigError) as error:
        load_gateway_settings(config)
    assert "set api_key or api_key_file, not both" in str(error.value)
    assert "the-key-itself" not in str(error.value)
    config.write_text(f"[gateway.blueprint]\nclient_secret_file = '{tmp_path / 'missing'}'\n")
    with pytest.raises(ConfigError) as error:
        load_gateway_settings(config)
    assert f"{tmp_path / 'missing'}: no such file" in str(error.value)


def test_callback_url_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="callback_url needs callback_secret"):
        GatewaySettings(partner={"callback_url": "https://ehr.example/hook"})


def test_each_replica_has_its_own_mqtt_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "GW-Host-2.clinic.example")
    one = GatewaySettings()
    assert (one.replica_name, one.mqtt_username, one.mqtt_client_id) == (
        "gw-host-2", "gateway", "gateway",
    )  # fmt: skip
    named = GatewaySettings(replica="b")
    assert (named.replica_name, named.mqtt_username, named.mqtt_client_id) == (
        "b", "gateway-b", "gateway-b",
    )  # fmt: skip
    chosen = GatewaySettings(replica="b", mqtt={"username": "gw", "client_id": "gateway-x"})
    assert (chosen.mqtt_username, chosen.mqtt_client_id) == ("gw", "gateway-x")


def test_shared_subscriptions_are_the_default_with_postgresql() -> None:
    assert GatewaySettings().shared_subscription is False
    on_postgres = GatewaySettings(store={"url": "postgresql://gateway@db.example/gateway"})
    assert on_postgres.shared_subscription is True
    assert GatewaySettings(mqtt={"shared_subscription": True}).shared_subscription is True


def test_a_client_id_a_device_could_hold_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway.mqtt]\nclient_id = "room-1"\n')
    with pytest.raises(ConfigError) as error:
        load_gateway_settings(config)
    assert "gateway.mqtt.client_id" in str(error.value)
    assert "gateway-<name>" in str(error.value)
