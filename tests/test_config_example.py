"""config.example.toml documents every settings key with its default; keep them in step."""

import tomllib
from pathlib import Path

from pydantic import BaseModel

from agent.settings import AgentSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"
# Keys whose default depends on the machine, shown commented out in the example.
COMMENTED = {"agent.state_dir", "agent.gateway_public_key"}


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


def test_agent_keys_and_defaults_match():
    document = tomllib.loads(EXAMPLE.read_text())
    in_file = file_values(document["agent"], "agent")
    defaults = model_defaults(AgentSettings, "agent")
    text = EXAMPLE.read_text()
    for key in COMMENTED:
        assert f"# {key.rsplit('.', 1)[1]} = " in text, f"{key} not documented"
    assert set(in_file) == set(defaults) - COMMENTED
    for key, value in in_file.items():
        assert value == defaults[key], f"{key}: example says {value!r}, default {defaults[key]!r}"
