"""`room-gateway doctor`: what `config validate` cannot see without connecting.

`config validate` reads files only. The doctor reaches what the settings name and reports,
one line each with its fix:

- the store: reachable (a PostgreSQL server that is down, refuses the password, or has no
  such database), not missing or empty beside a used state directory, a SQLite file that
  passes ``quick_check``, and its schema version against this code's (newer: another replica was
  upgraded first, upgrade this one; older: ``serve`` migrates it on start);
- the broker, when a relay is configured: asked of the gateway running on this host when
  one answers (its /readyz: connected, subscriptions granted), never by logging in beside
  it (that would knock its relay off); else probed: it accepts the relay's CONNECT, and, when the
  replicas share subscriptions (``$share/gateway/...``, the default on PostgreSQL), it
  offers them: an MQTT 5 broker may say it does not (CONNACK SharedSubscriptionAvailable
  = 0, or SUBACK 0x9E), and replicas would then each take every room's messages.

Nothing is created or changed: a SQLite file that does not exist yet is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.local_api import running_readiness
from gateway.settings import GatewaySettings
from gateway.state_check import missing_store_problem
from gateway.store import Database, SqliteLocation, StoreError, latest_version
from protocol import topics
from runtime.mqtt import BrokerUnavailable, connect_once

Verdict = Literal["ok", "problem"]


@dataclass(frozen=True)
class Finding:
    verdict: Verdict
    what: str  # store, broker
    text: str

    def line(self) -> str:
        return f"{self.what}: {self.verdict}: {self.text}"


def diagnose(settings: GatewaySettings) -> list[Finding]:
    return [store_finding(settings), *broker_findings(settings)]


def store_finding(settings: GatewaySettings) -> Finding:
    location = settings.store_location
    where = location.display
    missing = missing_store_problem(settings)
    if missing is not None:
        return Finding("problem", "store", missing)
    if isinstance(location, SqliteLocation) and not location.path.exists():
        return Finding("ok", "store", f"{where} does not exist yet (serve creates it)")
    try:
        db = Database.open(location, migrate=False)
    except StoreError as exc:
        return Finding("problem", "store", f"{exc}: {_store_fix(settings)}")
    try:
        damage = db.integrity_problem()
        version = db.schema_version() if damage is None else 0
    except StoreError as exc:
        return Finding("problem", "store", f"{where}: cannot read the schema version ({exc})")
    finally:
        db.close()
    if damage is not None:
        return Finding(
            "problem", "store", f"{damage}: the file is damaged; restore it from a backup"
        )
    latest = latest_version()
    if version > latest:
        return Finding(
            "problem",
            "store",
            f"{where}: schema version {version} is newer than this gateway's ({latest}):"
            " another replica runs a newer release; upgrade this one to it",
        )
    if version < latest:
        return Finding(
            "ok",
            "store",
            f"{where}: schema version {version}, this gateway's is {latest}"
            " (serve migrates it on start)",
        )
    return Finding("ok", "store", f"{where}: reachable, schema version {version}")


def _store_fix(settings: GatewaySettings) -> str:
    if isinstance(settings.store_location, SqliteLocation):
        return "check the file's path and permissions (gateway.database_file)"
    return (
        "check that the server runs and takes connections from this host, the user and"
        " database in gateway.store.url, and the password (store.password_file, the systemd"
        " credential gateway-database-password or ~/.pgpass)"
    )


def broker_findings(settings: GatewaySettings) -> list[Finding]:
    mqtt = settings.mqtt
    if not mqtt.broker_url:
        return []
    shared = settings.shared_subscription
    probe_topic = f"$share/{topics.SHARE_GROUP}/{topics.ROOT}/+/state" if shared else None
    try:
        password = settings.mqtt_password
    except ValueError as exc:
        return [Finding("problem", "broker", str(exc))]
    # A gateway running here is asked instead: the broker makes the client id the user
    # name, so a probe logged in as the relay's user would knock the running relay off.
    running = running_readiness(settings)
    if running is not None:
        return [_running_broker(mqtt.broker_url, running)]
    client_id = f"{settings.mqtt_client_id}-doctor"[:64]
    try:
        answer = connect_once(
            mqtt, client_id, settings.mqtt_username, password, subscribe=probe_topic
        )
    except (BrokerUnavailable, ValueError) as exc:
        return [Finding("problem", "broker", f"{mqtt.broker_url}: {exc}")]
    if answer.error is not None:
        return [
            Finding(
                "problem",
                "broker",
                f"{mqtt.broker_url}: cannot reach it ({answer.error}): check gateway.mqtt."
                "broker_url and that the broker runs",
            )
        ]
    assert answer.connack is not None
    if answer.connack.is_failure:
        return [
            Finding(
                "problem",
                "broker",
                f"{mqtt.broker_url}: the broker refused the relay ({answer.connack}): check"
                " gateway.mqtt.username and its password (room-gateway broker-config)",
            )
        ]
    if shared and not answer.shared_subscriptions:
        return [
            Finding(
                "problem",
                "broker",
                f"{mqtt.broker_url}: no shared subscriptions on this broker, which replicas"
                " need to split the rooms' messages: use an MQTT 5 broker that has them"
                " (mosquitto >= 2.0, EMQX), or run one gateway with"
                " gateway.mqtt.shared_subscription = false",
            )
        ]
    how = "shared subscriptions available" if shared else "connected (not shared)"
    return [Finding("ok", "broker", f"{mqtt.broker_url}: {how}")]


def _running_broker(url: str, readiness: dict[str, Any]) -> Finding:
    check = readiness["checks"].get("broker")
    status = check.get("status") if isinstance(check, dict) else None
    detail = check.get("detail", "") if isinstance(check, dict) else ""
    if status == "ok":
        return Finding("ok", "broker", f"{url}: the running gateway's relay is {detail}")
    if status == "not_configured":
        return Finding(
            "problem",
            "broker",
            f"{url}: the running gateway has no relay ({detail}): restart it with these"
            " settings (systemctl restart room-gateway)",
        )
    return Finding(
        "problem",
        "broker",
        f"{url}: the running gateway's relay: {detail or 'no broker check'}: check"
        " gateway.mqtt.broker_url, that the broker runs, and the relay's user and password"
        " (room-gateway broker-config)",
    )
