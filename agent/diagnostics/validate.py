"""`room-agent config validate`: everything wrong with a device's settings, before a visit ends.

Loading the settings catches wrong keys, types and ranges. A device can still fail at
start with settings that load: a gateway key that does not decode, a state dir it cannot
create, a gateway URL without its token, a TLS file that is missing or not PEM, or a
microphone name that matches nothing. Those are checked here too, so one run lists every
problem, each as ``SOURCE: agent.key: problem``, the way the loader phrases its own.
Nothing is created or changed. Secrets are never printed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.settings import CONFIG_ENV, AgentSettings, load_agent_settings
from protocol.envelope import EnvelopeError, public_key_from_text
from runtime.file_checks import ca_file_problem, client_cert_problem, unwritable_dir
from runtime.settings import ConfigError, chosen_config, value_source

# A check returns (dotted key under [agent], problem) pairs; empty when all is well.
Problems = list[tuple[str, str]]


def config_path(file: Path | None, option: Path | None) -> Path | None:
    return chosen_config(file, option, CONFIG_ENV)


def validate(path: Path | None, devices: bool) -> tuple[AgentSettings | None, list[str]]:
    """The settings (None if they do not load) and every problem found, one line each."""
    try:
        settings = load_agent_settings(path)
    except ConfigError as exc:
        return None, exc.problems
    checks: list[Callable[[AgentSettings], Problems]] = [
        _sealing_key,
        _state_dir,
        _link,
        _mqtt,
    ]
    if devices:
        checks.append(_audio_device)
    found = [problem for check in checks for problem in check(settings)]
    prefix = str(AgentSettings.model_config["env_prefix"])
    lines = [f"{value_source(prefix, key, path)}: agent.{key}: {text}" for key, text in found]
    return settings, lines


def summary(settings: AgentSettings) -> str:
    """What a valid file sets up, in a few words and without secrets."""
    link = settings.link.gateway_url or "none (record only)"
    broker = settings.mqtt.broker_url or "none"
    return (
        f"device {settings.device_id}, microphone {settings.audio.device!r},"
        f" state {settings.state_dir}, gateway {link}, broker {broker}"
    )


def _sealing_key(settings: AgentSettings) -> Problems:
    text = settings.gateway_public_key
    if not text:
        return [("gateway_public_key", "not set (required to record: audio is sealed to it)")]
    try:
        public_key_from_text(text)
    except EnvelopeError as exc:
        return [("gateway_public_key", str(exc))]
    return []


def _state_dir(settings: AgentSettings) -> Problems:
    problem = unwritable_dir(settings.state_dir)
    return [("state_dir", problem)] if problem else []


def _link(settings: AgentSettings) -> Problems:
    link = settings.link
    problems: Problems = []
    if link.gateway_url and link.ingest_token is None:
        problems.append(
            (
                "link.ingest_token",
                "not set (needed with link.gateway_url; give it as ingest_token_file,"
                " ROOM_AGENT_LINK__INGEST_TOKEN or the credential ingest-token)",
            )
        )
    if link.ca_file is not None:
        problems += _ca_problems("link.ca_file", link.ca_file)
    return problems


def _mqtt(settings: AgentSettings) -> Problems:
    mqtt = settings.mqtt
    problems: Problems = []
    if mqtt.broker_url and mqtt.password is None and mqtt.client_cert_file is None:
        problems.append(
            (
                "mqtt.password",
                "not set (needed with mqtt.broker_url unless a client certificate is used;"
                " give it as password_file, ROOM_AGENT_MQTT__PASSWORD or the credential"
                " mqtt-password)",
            )
        )
    if mqtt.ca_file is not None:
        problems += _ca_problems("mqtt.ca_file", mqtt.ca_file)
    if mqtt.client_cert_file is not None:
        problems += _cert_problems(
            "mqtt.client_cert_file", mqtt.client_cert_file, mqtt.client_key_file
        )
    return problems


def _ca_problems(key: str, path: Path) -> Problems:
    problem = ca_file_problem(path)
    return [(key, problem)] if problem else []


def _cert_problems(key: str, cert: Path, key_file: Path | None) -> Problems:
    problem = client_cert_problem(cert, key_file)
    return [(key, problem)] if problem else []


def _audio_device(settings: AgentSettings) -> Problems:
    """Needs PortAudio and the device's driver: only when asked for (--devices)."""
    from agent.pipeline.audio import AudioInputError  # numpy: not for status and doctor
    from agent.pipeline.capture import choose_device, list_input_devices

    try:
        choose_device(list_input_devices(), settings.audio.device)
    except AudioInputError as exc:
        return [("audio.device", str(exc))]
    return []
