"""config.example.toml documents every settings key with its default; keep them in step."""

import re
import tomllib
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from agent.settings import AgentSettings
from gateway.settings import GatewaySettings

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
# Keys whose default depends on the machine, shown commented out in the example.
COMMENTED = {
    "agent.state_dir",
    "agent.audio.vad_mode",  # these three come from agent.audio.trim unless set
    "agent.audio.pre_roll_ms",
    "agent.audio.hangover_ms",
    "agent.gateway_public_key",
    "agent.link.ingest_token",
    "agent.link.ingest_token_file",
    "agent.link.ca_file",
    "agent.mqtt.password",
    "agent.mqtt.password_file",
    "agent.mqtt.ca_file",
    "agent.mqtt.client_cert_file",
    "agent.mqtt.client_key_file",
    # Nothing by default (no button, the shipped cues, no hooks): an example to uncomment.
    "agent.feedback.gpio.button_pin",
    "agent.feedback.cues.directory",
    "agent.feedback.hooks",
}
# The gateway's machine-dependent keys, and its secrets (never shown with a value to copy).
GATEWAY_COMMENTED = {
    "gateway.state_dir",
    "gateway.database_file",
    "gateway.sealing_key_file",
    "gateway.ingest.open_workers",
    "gateway.audio_key_file",
    "gateway.blueprint.api_key",
    "gateway.blueprint.api_key_file",
    "gateway.blueprint.client_secret",
    "gateway.blueprint.client_secret_file",
    "gateway.partner.callback_url",
    "gateway.partner.callback_secret",
    "gateway.partner.callback_secret_file",
    "gateway.mqtt.password",
    "gateway.mqtt.password_file",
    "gateway.store.password",
    "gateway.store.password_file",
    "gateway.mqtt.ca_file",
    "gateway.mqtt.client_cert_file",
    "gateway.mqtt.client_key_file",
    "gateway.mqtt.shared_subscription",
    "gateway.devices.broker_ca_file",
    "gateway.broker.tls_cert_file",
    "gateway.broker.tls_key_file",
}


def model_defaults(model: type[BaseModel], prefix: str) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= model_defaults(annotation, key)
        else:
            found[key] = field.get_default(call_default_factory=False)
    return found


def file_values(table: dict, prefix: str) -> dict[str, object]:
    found: dict[str, object] = {}
    for name, value in table.items():
        key = f"{prefix}.{name}"
        found |= file_values(value, key) if isinstance(value, dict) else {key: value}
    return found


TABLE = re.compile(r"^\[([\w.]+)\]\s*$")
COMMENTED_KEY = re.compile(r"^#\s?(\w+) = ")


def commented_keys(text: str) -> set[str]:
    """The dotted keys shown commented out (``# key = value``), each under its own table:
    ``ca_file`` documented under [agent.mqtt] does not document agent.link.ca_file."""
    found: set[str] = set()
    table = ""
    for line in text.splitlines():
        if header := TABLE.match(line):
            table = header[1]
        elif (key := COMMENTED_KEY.match(line)) and table:
            found.add(f"{table}.{key[1]}")
    return found


def test_a_commented_key_counts_only_in_its_own_table():
    text = '[agent.link]\n# gateway_url is the address\n[agent.mqtt]\n# ca_file = "x"\n'
    assert commented_keys(text) == {"agent.mqtt.ca_file"}


def test_agent_keys_and_defaults_match():
    document = tomllib.loads(EXAMPLE.read_text())
    in_file = file_values(document["agent"], "agent")
    defaults = model_defaults(AgentSettings, "agent")
    documented = commented_keys(EXAMPLE.read_text())
    assert COMMENTED - documented == set(), "not documented (commented out) in its table"
    assert set(in_file) == set(defaults) - COMMENTED
    for key, value in in_file.items():
        assert value == defaults[key], f"{key}: example says {value!r}, default {defaults[key]!r}"


def test_gateway_keys_and_defaults_match():
    document = tomllib.loads(EXAMPLE.read_text())
    in_file = file_values(document["gateway"], "gateway")
    defaults = model_defaults(GatewaySettings, "gateway")
    documented = commented_keys(EXAMPLE.read_text())
    assert GATEWAY_COMMENTED - documented == set(), "not documented (commented out) in its table"
    assert set(in_file) == set(defaults) - GATEWAY_COMMENTED
    built = GatewaySettings(**document["gateway"])  # the example is a valid configuration
    for key, value in in_file.items():
        default = defaults[key]
        if default is PydanticUndefined:  # a default_factory: compare the value it builds
            default = _value_at(GatewaySettings(), key)
        assert value == default, f"{key}: example says {value!r}, default {default!r}"
        assert _value_at(built, key) == value, key


def test_no_commented_key_is_stale():
    every = set(model_defaults(AgentSettings, "agent")) | set(
        model_defaults(GatewaySettings, "gateway")
    )
    assert commented_keys(EXAMPLE.read_text()) - every == set()


def _value_at(settings: BaseModel, key: str) -> object:
    value: object = settings
    for part in key.split(".")[1:]:
        value = getattr(value, part)
    return value
