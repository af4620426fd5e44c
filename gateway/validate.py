"""`room-gateway config validate`: everything wrong with the gateway's settings, in one run.

Loading catches wrong keys, types and ranges. Settings that load can still fail in
service, so these are checked too, each reported as ``SOURCE: gateway.key: problem``
the way the loader phrases its own:

- the sealing key, if its file exists: readable, a valid key, and not readable by others
  (it opens every room's audio);
- the state directory (and a separate database file's directory) can be created/written;
- URLs well-formed beyond their pattern (a port that exists); Blueprint over plain http
  only to this host (the simulator), and not with the simulator's default credentials;
- MQTT: the TLS files load as the relay and the broker will load them; the relay has a
  password (or a certificate); the relay's connection matches the broker that
  `room-gateway broker-config` writes (TLS listener, required client certificates);
- the addresses devices are given (gateway/devices/addresses.py): a wildcard, or
  plaintext to another host, is a problem; loopback or not set, a warning.

Nothing is created or changed; secrets are never printed. `serve` runs the same checks
(:func:`problems`) and refuses to start on any of them: no production path runs with a
default secret.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from gateway.blueprint.defaults import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from gateway.devices.addresses import device_address_problems
from gateway.keys import KeyFileError, load_key
from gateway.settings import CONFIG_ENV, GatewaySettings, load_gateway_settings
from runtime.addresses import is_loopback
from runtime.file_checks import (
    ca_file_problem,
    client_cert_problem,
    server_cert_problem,
    unwritable_dir,
)
from runtime.mqtt import broker_address
from runtime.settings import ConfigError, chosen_config, value_source

# A check returns (dotted key under [gateway], problem) pairs; empty when all is well.
Problems = list[tuple[str, str]]


def config_path(file: Path | None, option: Path | None) -> Path | None:
    return chosen_config(file, option, CONFIG_ENV)


def validate(path: Path | None) -> tuple[GatewaySettings | None, list[str]]:
    """The settings (None if they do not load) and every problem found, one line each."""
    try:
        settings = load_gateway_settings(path)
    except ConfigError as exc:
        return None, exc.problems
    return settings, problems(settings, path)


def problems(settings: GatewaySettings, path: Path | None) -> list[str]:
    """Every problem of settings that loaded, one line each (what `serve` refuses)."""
    checks: list[Callable[[GatewaySettings], Problems]] = [
        _sealing_key,
        _directories,
        _blueprint,
        _urls,
        _mqtt,
        _broker,
        _device_addresses,
    ]
    found = [problem for check in checks for problem in check(settings)]
    return _lines(found, path)


def warnings(settings: GatewaySettings, path: Path | None) -> list[str]:
    """What works but deserves a look (a loopback address devices are given, ...)."""
    found = [
        (p.key, p.text)
        for p in device_address_problems(settings, unset_gateway="warning")
        if p.severity == "warning"
    ]
    return _lines(found, path)


def _lines(found: Problems, path: Path | None) -> list[str]:
    prefix = str(GatewaySettings.model_config["env_prefix"])
    return [f"{value_source(prefix, key, path)}: gateway.{key}: {text}" for key, text in found]


def summary(settings: GatewaySettings) -> str:
    """What valid settings set up, in a few words and without secrets."""
    key = "present" if settings.sealing_key_path.exists() else "none yet (room-gateway keygen)"
    return (
        f"database {settings.store_location.display}, Blueprint {settings.blueprint.base_url},"
        f" listening on {settings.http.host}:{settings.http.port}, sealing key {key}"
    )


def _sealing_key(settings: GatewaySettings) -> Problems:
    path = settings.sealing_key_path
    if not path.exists():
        return []  # keygen makes it; `summary` says so
    try:
        load_key(path)
    except KeyFileError as exc:
        return [("sealing_key_file", str(exc))]
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return [
            (
                "sealing_key_file",
                f"{path}: readable by others (mode {mode:04o}; it opens every room's"
                f" audio): chmod 600 {path}",
            )
        ]
    return []


def _directories(settings: GatewaySettings) -> Problems:
    problems: Problems = []
    if (problem := unwritable_dir(settings.state_dir)) is not None:
        problems.append(("state_dir", problem))
    if settings.database_file is not None:
        problem = unwritable_dir(settings.database_file.parent)
        if problem is not None:
            problems.append(("database_file", problem))
    return problems


def _blueprint(settings: GatewaySettings) -> Problems:
    blueprint = settings.blueprint
    url = blueprint.base_url
    if (problem := _url_problem(url)) is not None:
        return [("blueprint.base_url", problem)]
    if is_loopback(urlsplit(url).hostname or ""):
        return []  # the simulator (or a tunnel on this host)
    problems: Problems = []
    if urlsplit(url).scheme != "https":
        problems.append(
            ("blueprint.base_url", f"{url}: must be https:// (the credentials go with every call)")
        )
    defaults = (
        ("blueprint.api_key", blueprint.api_key.get_secret_value() == DEFAULT_API_KEY),
        ("blueprint.client_id", blueprint.client_id == DEFAULT_CLIENT_ID),
        (
            "blueprint.client_secret",
            blueprint.client_secret.get_secret_value() == DEFAULT_CLIENT_SECRET,
        ),
    )
    for key, is_default in defaults:
        if is_default:
            problems.append((key, "still the simulator's default (set the partner credential)"))
    return problems


def _urls(settings: GatewaySettings) -> Problems:
    urls = (
        ("partner.callback_url", settings.partner.callback_url),
        ("devices.gateway_url", settings.devices.gateway_url),
        ("devices.broker_url", settings.devices.broker_url),
        ("mqtt.broker_url", settings.mqtt.broker_url),
    )
    return [(key, problem) for key, url in urls if url and (problem := _url_problem(url))]


def _url_problem(url: str) -> str | None:
    """What the settings' patterns cannot see: a host that is there, a port that exists."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return f"{url}: port must be 1..65535"
    if not parts.hostname:
        return f"{url}: no host name"
    return None


def _device_addresses(settings: GatewaySettings) -> Problems:
    """What `device add` would refuse to give devices (gateway/devices/addresses.py)."""
    return [
        (p.key, p.text)
        for p in device_address_problems(settings, unset_gateway="warning")
        if p.severity == "error"
    ]


def _mqtt(settings: GatewaySettings) -> Problems:
    mqtt = settings.mqtt
    problems: Problems = []
    if mqtt.ca_file is not None and (problem := ca_file_problem(mqtt.ca_file)):
        problems.append(("mqtt.ca_file", problem))
    if mqtt.client_cert_file is not None:
        problem = client_cert_problem(mqtt.client_cert_file, mqtt.client_key_file)
        if problem is not None:
            problems.append(("mqtt.client_cert_file", problem))
    if not mqtt.broker_url or mqtt.client_cert_file is not None:
        return problems
    try:
        password = settings.mqtt_password
    except ValueError as exc:  # state_dir/mqtt-password cannot be read
        return [*problems, ("mqtt.password", str(exc))]
    if password is None:
        problems.append(
            (
                "mqtt.password",
                f"not set, and {settings.mqtt_password_path} does not exist (run room-gateway"
                " broker-config, or set password_file or the credential gateway-mqtt-password)",
            )
        )
    return problems


def _broker(settings: GatewaySettings) -> Problems:
    """The broker `broker-config` writes, and the relay's way of connecting to it."""
    broker, mqtt = settings.broker, settings.mqtt
    problems: Problems = []
    if broker.tls_cert_file is not None and broker.tls_key_file is not None:
        problem = server_cert_problem(broker.tls_cert_file, broker.tls_key_file)
        if problem is not None:
            problems.append(("broker.tls_cert_file", problem))
    broker_ca = settings.devices.broker_ca_file
    if broker_ca is not None and (problem := ca_file_problem(broker_ca)) is not None:
        problems.append(("devices.broker_ca_file", problem))
    if not mqtt.broker_url or _url_problem(mqtt.broker_url):
        return problems
    _, port, tls = broker_address(mqtt.broker_url)
    if broker.tls_cert_file is not None and port == broker.port and not tls:
        problems.append(
            (
                "mqtt.broker_url",
                f"{mqtt.broker_url}: the broker listens with TLS on port {port}"
                " (broker.tls_cert_file): use mqtts://",
            )
        )
    if broker.require_certificate and mqtt.client_cert_file is None:
        problems.append(
            (
                "mqtt.client_cert_file",
                "not set, but broker.require_certificate is on: set it and client_key_file to"
                f" {settings.state_dir}/mqtt-client.crt and .key (room-gateway broker-config"
                " issues them)",
            )
        )
    return problems
