"""The addresses room devices are given: reachable from a room, and not in clear.

`device add` (and enrollment) hands every device ``devices.gateway_url`` and the broker's
URL (``devices.broker_url``, else ``mqtt.broker_url``). Nothing is derived from the
listener (``http.host = "0.0.0.0"`` would give devices ``http://0.0.0.0:...``), so each
is judged here, the same way for `device add` (which refuses on an error) and `config
validate` (which reports errors as problems, warnings as warnings):

- not set: the gateway URL is an error for `device add` (a device could not send audio),
  a warning for `config validate` (the gateway runs without devices); no broker URL is a
  warning (devices then take no commands);
- a wildcard address (0.0.0.0, ::): an error, nothing connects to it;
- loopback (127.0.0.1, localhost): a warning, only a device on this host reaches it;
- plaintext (``http://``, ``mqtt://``) to another host: an error, the device's ingest
  token or MQTT password would travel in clear, unless ``devices.allow_plaintext``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import GatewaySettings
from runtime.addresses import Severity, judge_url


@dataclass(frozen=True)
class AddressProblem:
    key: str  # dotted, under [gateway]
    severity: Severity
    text: str


def device_address_problems(
    settings: GatewaySettings, unset_gateway: Severity = "error"
) -> list[AddressProblem]:
    devices = settings.devices
    problems: list[AddressProblem] = []
    if not devices.gateway_url:
        problems.append(
            AddressProblem(
                "devices.gateway_url",
                unset_gateway,
                "not set: the URL room devices reach this gateway at, through its TLS proxy"
                " (e.g. https://gateway.clinic.example)",
            )
        )
    else:
        problems += _judge(
            "devices.gateway_url", devices.gateway_url, "https", "ingest token", settings
        )
    broker_key = "devices.broker_url" if devices.broker_url else "mqtt.broker_url"
    broker_url = settings.device_broker_url
    if not broker_url:
        problems.append(
            AddressProblem(
                "devices.broker_url",
                "warning",
                "not set (nor mqtt.broker_url): devices get no broker and take no commands",
            )
        )
    else:
        problems += _judge(broker_key, broker_url, "mqtts", "MQTT password", settings)
    return problems


def _judge(
    key: str, url: str, secure: str, secret: str, settings: GatewaySettings
) -> list[AddressProblem]:
    verdict = judge_url(url, secure, secret, settings.devices.allow_plaintext)
    return [AddressProblem(key, verdict.severity, verdict.text)] if verdict else []
