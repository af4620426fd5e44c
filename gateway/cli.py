"""room-gateway: the partner-run service's command line."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway import CONFIG_ENV
from gateway.jobs import JOB_STATES
from gateway.sessions.audio_files import CONTENT_TYPES
from runtime.cli import Fatal, SettingsContext, config_option, run_program

if TYPE_CHECKING:
    from gateway.devices.enrollment import Enrollment
    from gateway.partner.tokens import TokenKind
    from gateway.settings import GatewaySettings
    from gateway.store import Connection, Database

# Each command imports what it needs when it runs: `--help` and a quick command do not
# wait for pydantic, the store's drivers, cryptography and httpx (a Pi is 5-10x slower).

SUFFIX_TYPES = {".flac": "audio/flac", ".ogg": "audio/ogg", ".opus": "audio/ogg"}


def _load_settings(path: Path | None) -> GatewaySettings:
    from gateway.settings import load_gateway_settings

    return load_gateway_settings(path)


def _check_id(value: str, what: str) -> None:
    from protocol.ids import ID_DESCRIPTION, ID_PATTERN

    if not re.fullmatch(ID_PATTERN, value):
        raise Fatal(f"{what}: {value!r}: must be {ID_DESCRIPTION}")


class CliState(SettingsContext["GatewaySettings"]):
    def __init__(self, config_path: Path | None) -> None:
        super().__init__(config_path, _load_settings)

    @contextmanager
    def database(self) -> Iterator[Database]:
        """The gateway's store, for admin commands (safe while the service runs); never
        made afresh beside a used state directory (gateway/state_check.py)."""
        from gateway.state_check import missing_store_problem

        missing = missing_store_problem(self.settings)
        if missing is not None:
            raise Fatal(missing)
        from gateway.store import Database, StoreError

        try:
            db = Database.open(self.settings.store_location)
        except StoreError as exc:
            raise Fatal(str(exc)) from None
        try:
            yield db
        finally:
            db.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option(CONFIG_ENV)
@click.version_option(package_name="room-audio", prog_name="room-gateway")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """The gateway: holds the Blueprint secrets, ingests room audio, relays notes."""
    ctx.obj = CliState(config_path)


@cli.command()
@click.pass_obj
def serve(state: CliState) -> None:
    """Run the gateway service (HTTP API, webhook receiver, job worker).

    Refuses to start with any problem `config validate` reports (e.g. a real Blueprint
    with the simulator's default secret, which would accept forged webhooks)."""
    from gateway.server import ServeError
    from gateway.server import serve as run_service
    from gateway.validate import config_path, problems

    found = problems(state.settings, config_path(None, state.config_path))
    if found:
        lines = "\n".join(f"serve: {line}" for line in found)
        raise Fatal(f"{lines}\nserve: not started (room-gateway config validate)")
    try:
        run_service(state.settings)
    except ServeError as exc:
        raise Fatal(str(exc)) from None


@cli.group()
def config() -> None:
    """Check the settings."""


@config.command("validate")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.pass_obj
def config_validate(state: CliState, file: Path | None) -> None:
    """Check FILE (else --config, else $ROOM_GATEWAY_CONFIG) with the environment on top.

    Beyond loading: the sealing key (if present) loads and is private, the state dir can
    be written, URLs are usable (Blueprint over https with real credentials), the MQTT
    TLS files load, the relay has its credentials and matches the broker broker-config
    writes. Prints every problem, one line each (exit status 2), or "FILE: ok".
    """
    from gateway.validate import config_path, summary, validate, warnings

    path = config_path(file, state.config_path)
    settings, problems = validate(path)
    if problems or settings is None:
        raise Fatal("\n".join(problems))
    click.echo(f"{path or 'defaults and environment'}: ok ({summary(settings)})")
    for line in warnings(settings, path):
        click.echo(f"warning: {line}", err=True)


@cli.command()
@click.pass_obj
def doctor(state: CliState) -> None:
    """Reach the store and the broker the settings name: one line each, with its fix.

    The store: reachable, and its schema not newer than this gateway (another replica
    upgraded first). The broker (when mqtt.broker_url is set): it takes the relay, and has
    the shared subscriptions replicas need. Exit status 2 on any problem; changes nothing.
    """
    from gateway.doctor import diagnose

    findings = diagnose(state.settings)
    for finding in findings:
        if finding.verdict == "ok":
            click.echo(finding.line())
    problems = [finding.line() for finding in findings if finding.verdict != "ok"]
    if problems:
        raise Fatal("\n".join(problems))


@cli.command()
@click.option(
    "--force",
    is_flag=True,
    help="Rotate: a new key for sealing, the old one kept (retired-keys/) for opening.",
)
@click.pass_obj
def keygen(state: CliState, force: bool) -> None:
    """Create the sealing key pair; print the public key for the room devices' config.

    With a key already in place, prints its public key and changes nothing. --force
    rotates: the old key is kept in retired-keys/ beside it, so chunks still sealed to
    it (in devices' spools) open; devices seal to the new one once they have it (a running
    gateway serves it at once). The audio key is not touched.
    """
    from gateway.keys import KeyFileError, create_key, load_key, public_text, rotate_key

    path = state.settings.sealing_key_path
    try:
        if path.exists() and not force:
            key = load_key(path)
            click.echo(f"{path}: key exists; its public key:", err=True)
        elif force:
            key, kept = rotate_key(path)
            if kept is not None:
                click.echo(f"{kept}: the old key, kept for opening its chunks", err=True)
            click.echo(f"{path}: new sealing key written (mode 0600); public key:", err=True)
        else:
            key = create_key(path)
            click.echo(f"{path}: new sealing key written (mode 0600); public key:", err=True)
    except KeyFileError as exc:
        raise Fatal(str(exc)) from None
    click.echo(public_text(key))


def _token_commands(name: str, kind: TokenKind, what: str) -> None:
    """``NAME create|list|revoke``: bearer tokens of one kind, stored hashed."""

    @cli.group(name, help=f"Bearer tokens for {what} (stored hashed).")
    def group() -> None:
        pass

    @group.command("create")
    @click.option("--label", default="", help="What the token is for (shown by list).")
    @click.pass_obj
    def create(state: CliState, label: str) -> None:
        """Create a token and print it; it is shown only this once."""
        from gateway.partner import tokens

        with state.database() as db, db.transaction() as conn:
            info, token = tokens.create(conn, label, kind)
        click.echo(f"token {info.id} created; store it now, it is not shown again:", err=True)
        click.echo(token)

    @group.command("list")
    @click.pass_obj
    def list_(state: CliState) -> None:
        """Token ids, labels and whether each is revoked (never the tokens)."""
        from gateway.partner import tokens

        with state.database() as db, db.transaction(write=False) as conn:
            found = tokens.list_tokens(conn, kind)
        for info in found:
            status = "revoked" if info.revoked_at else "active"
            click.echo(f"{info.id}  {status:7}  {_when(info.created_at)}  {info.label}")

    @group.command("revoke")
    @click.argument("token_id")
    @click.pass_obj
    def revoke(state: CliState, token_id: str) -> None:
        """Revoke a token by its id (from list)."""
        from gateway.partner import tokens

        with state.database() as db, db.transaction() as conn:
            revoked = tokens.revoke(conn, token_id, kind)
        if not revoked:
            raise Fatal(f"{name} revoke: no active token {token_id}")
        click.echo(f"token {token_id} revoked")


_token_commands("partner-token", "partner", "the partner application")
_token_commands("admin-token", "admin", "clinic IT's /console")


@cli.group("jobs")
def jobs_group() -> None:
    """The durable job queue: what the gateway still has to do, and what failed."""


@jobs_group.command("list")
@click.option("--state", "job_state", type=click.Choice(JOB_STATES), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def jobs_list(state: CliState, job_state: str | None, limit: int, as_json: bool) -> None:
    """Newest first: id, kind, state, attempts, next run, last error, payload (ids only)."""
    from gateway.jobs import queue as jobs

    with state.database() as db, db.transaction(write=False) as conn:
        found = jobs.list_jobs(conn, job_state, limit)  # type: ignore[arg-type]
    for job in found:
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(job)))
            continue
        error = f"  error: {job.last_error}" if job.last_error else ""
        click.echo(
            f"{job.id:>6}  {job.kind:17} {job.state:7} {job.attempts}/{job.max_attempts}"
            f"  next {_when(job.next_run_at)}  {json.dumps(job.payload)}{error}"
        )


@jobs_group.command("retry")
@click.argument("job_id", type=int)
@click.pass_obj
def jobs_retry(state: CliState, job_id: int) -> None:
    """Queue a failed job again (fresh attempts); its session resumes where it failed."""
    from gateway.jobs import queue as jobs
    from gateway.sessions.lifecycle import SessionLifecycle

    lifecycle = SessionLifecycle(state.settings.jobs, state.settings.blueprint.environment)
    with state.database() as db, db.transaction() as conn:
        job = jobs.retry(conn, job_id)
        if job is not None and job.session_id is not None:
            lifecycle.resumed(conn, job.session_id)
    if job is None:
        raise Fatal(f"jobs retry: no failed job {job_id} (see: room-gateway jobs list)")
    click.echo(f"job {job_id} {job.kind} queued again")


@cli.group("blueprint")
def blueprint_group() -> None:
    """The gateway's records in Blueprint."""


@blueprint_group.command("resync")
@click.option("--clinician", "clinician_ids", multiple=True, help="This clinician (repeatable).")
@click.option("--client", "client_ids", multiple=True, help="This client (repeatable).")
@click.option("--all", "everything", is_flag=True, help="Every record and open session.")
@click.pass_obj
def blueprint_resync(
    state: CliState, clinician_ids: tuple[str, ...], client_ids: tuple[str, ...], everything: bool
) -> None:
    """Check every cached Blueprint id against Blueprint and repair the stale ones.

    For when Blueprint lost records, or blueprint.base_url moved to another environment.
    Without options: --all. Nothing is created twice (records are looked up first)."""
    import asyncio

    from gateway.blueprint.client import BlueprintError
    from gateway.service import blueprint_client
    from gateway.sessions.blueprint_records import BlueprintRecords, RecordMissing
    from gateway.sessions.lifecycle import SessionLifecycle
    from gateway.sessions.resync import resync

    if everything and (clinician_ids or client_ids):
        raise Fatal("blueprint resync: --all or --clinician/--client, not both")
    settings = state.settings
    chosen = bool(clinician_ids or client_ids)

    async def run(db: Database) -> list[str]:
        lifecycle = SessionLifecycle(settings.jobs, settings.blueprint.environment)
        async with blueprint_client(settings) as client:
            found = await resync(
                db,
                BlueprintRecords(
                    db, client, lifecycle, record_updates=settings.blueprint.record_updates
                ),
                clinicians=list(clinician_ids) if chosen else None,
                clients=list(client_ids) if chosen else None,
            )
        return [verified.describe() for verified in found]

    with state.database() as db:
        try:
            lines = asyncio.run(run(db))
        except (BlueprintError, RecordMissing) as exc:
            raise Fatal(f"blueprint resync: {exc}") from None
    for line in lines:
        click.echo(line)
    repaired = sum(1 for line in lines if "id confirmed" not in line)
    click.echo(f"{len(lines)} checked, {repaired} repaired or forgotten", err=True)


@cli.command("openapi")
@click.option("--check", "check_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False))
def openapi_command(check_file: Path | None, output: Path | None) -> None:
    """Print the partner API's OpenAPI document (--output FILE writes it; --check FILE
    fails if FILE differs from what this code serves)."""
    from gateway.api import spec

    text = spec.render(spec.document())
    if check_file is not None:
        if not check_file.is_file() or check_file.read_text() != text:
            raise Fatal(
                f"openapi: {check_file} is not what the code serves;"
                f" run: room-gateway openapi -o {check_file}"
            )
        click.echo(f"{check_file}: up to date")
        return
    if output is not None:
        output.write_text(text)
        click.echo(f"wrote {output}")
        return
    click.echo(text, nl=False)


@cli.group()
def room() -> None:
    """Rooms sessions can be started in, and their devices asked how they are (through
    the running gateway: ping, check, logs)."""


@room.command("add")
@click.argument("room_ids", metavar="ROOM_ID...", nargs=-1, required=True)
@click.pass_obj
def room_add(state: CliState, room_ids: tuple[str, ...]) -> None:
    """Provision rooms by id (each room device's id)."""
    from gateway import rooms

    for room_id in room_ids:
        _check_id(room_id, "room add")
    with state.database() as db, db.transaction() as conn:
        created = {room_id: rooms.add(conn, room_id) for room_id in room_ids}
    for room_id, added in created.items():
        click.echo(f"room {room_id} {'added' if added else 'exists already'}")


@room.command("list")
@click.pass_obj
def room_list(state: CliState) -> None:
    from gateway import rooms

    with state.database() as db, db.transaction(write=False) as conn:
        found = rooms.list_rooms(conn)
    for entry in found:
        click.echo(f"{entry.id}  {entry.active_session_id or '-'}")


DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` -> seconds."""
    found = DURATION.match(text.strip())
    if found is None:
        raise click.BadParameter(f"{text!r}: give a duration such as 90s, 10m, 2h or 1d")
    return float(found.group(1)) * DURATION_UNITS[found.group(2)]


def _ask_room(
    state: CliState, what: str, method: str, path: str, wait_s: float, **kwargs: Any
) -> Any:
    """One request to the running gateway's room diagnosis (gateway/local_api.py)."""
    from gateway.local_api import LocalGatewayError, call, operator_client

    with state.database() as db:
        try:
            with operator_client(state.settings, db, wait_s + 5) as client:
                return call(client, method, path, **kwargs)
        except LocalGatewayError as exc:
            raise Fatal(f"room {what}: {exc}") from None


def _room_path(room_id: str, what: str) -> str:
    _check_id(room_id, f"room {what}")
    return f"/v1/rooms/{room_id}/{what}"


@room.command("ping")
@click.argument("room_id")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0.1, 60), default=5.0,
              show_default=True, help="Seconds to wait for the answer.")  # fmt: skip
@click.pass_obj
def room_ping(state: CliState, room_id: str, timeout_s: float) -> None:
    """A round trip to ROOM_ID's device over MQTT, through the running gateway."""
    answer = _ask_room(
        state, "ping", "POST", _room_path(room_id, "ping"), timeout_s,
        params={"timeout_s": timeout_s},
    )  # fmt: skip
    click.echo(f"{room_id}: answered in {answer['round_trip_ms']:.1f} ms")


@room.command("check")
@click.argument("room_id")
@click.option("--seconds", type=click.FloatRange(1, 30), default=5.0, show_default=True,
              help="How long the device listens.")  # fmt: skip
@click.pass_obj
def room_check(state: CliState, room_id: str, seconds: float) -> None:
    """ROOM_ID's device listens and reports level, speech share, noise floor and a
    verdict (numbers only: no audio leaves the room). Refused while it records.
    Exit status 1 when the verdict is not good."""
    from gateway.api.room_diagnosis import CHECK_MARGIN_S

    answer = _ask_room(
        state, "check", "POST", _room_path(room_id, "check"), seconds + CHECK_MARGIN_S,
        json={"seconds": seconds},
    )  # fmt: skip
    check = answer.get("check")
    if not answer["ok"] or check is None:
        raise Fatal(f"room check: {room_id} did not measure: {answer.get('refused')}")
    for line in _check_lines(check):
        click.echo(line)
    if check["verdict"] != "good":
        raise SystemExit(1)


def _check_lines(check: dict[str, Any]) -> list[str]:
    def db(value: float | None, unit: str = "dBFS") -> str:
        return "-" if value is None else f"{value:.1f} {unit}"

    return [
        f"listened     {check['seconds']:.1f} s",
        f"level        {db(check['rms_dbfs'])} RMS, peak {db(check['peak_dbfs'])}",
        f"speech share {check['speech_share'] * 100:.0f} %",
        f"speech level {db(check['speech_dbfs'])}",
        f"noise floor  {db(check['noise_floor_dbfs'])} (SNR {db(check['snr_db'], 'dB')})",
        f"clipped      {check['clipped_share'] * 100:.2f} %",
        f"verdict      {check['verdict']}",
    ]


@room.command("logs")
@click.argument("room_id")
@click.option("--since", "since", default="10m", show_default=True,
              help="How far back: 90s, 10m, 2h, 1d.")  # fmt: skip
@click.option("--lines", "max_lines", type=click.IntRange(1, 500), default=200,
              show_default=True, help="At most this many (the newest).")  # fmt: skip
@click.pass_obj
def room_logs(state: CliState, room_id: str, since: str, max_lines: int) -> None:
    """ROOM_ID's agent's own recent log lines (ids and codes only), oldest first."""
    try:
        since_s = _seconds(since)
    except click.BadParameter as exc:
        raise Fatal(f"room logs: --since {exc.message}") from None
    if not 0 < since_s <= 7 * 86_400:
        raise Fatal("room logs: --since: between 1s and 7d")
    from gateway.api.room_diagnosis import LOGS_WAIT_S

    answer = _ask_room(
        state, "logs", "GET", _room_path(room_id, "logs"), LOGS_WAIT_S,
        params={"since_s": since_s, "max_lines": max_lines},
    )  # fmt: skip
    for line in answer["lines"]:
        at = datetime.fromisoformat(line["at"]).strftime("%Y-%m-%dT%H:%M:%SZ")
        click.echo(f"{at} {line['level']:7} {line['logger']}: {line['message']}")
    if not answer["lines"]:
        click.echo(f"{room_id}: no log lines in the last {since}", err=True)


@cli.group()
def device() -> None:
    """Room devices: credentials, their agent settings, revocation."""


@device.command("add")
@click.argument("room_id")
@click.option("--name", default=None, help="A label for the room (shown by list; not PHI).")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to write agent.toml and the credential files [default: state_dir/devices/ID].",
)
@click.option(
    "--install-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where those files will be on the device [default: devices.install_dir].",
)
@click.option("--rotate", is_flag=True, help="Replace an active device's credentials.")
@click.pass_obj
def device_add(
    state: CliState,
    room_id: str,
    name: str | None,
    out: Path | None,
    install_dir: Path | None,
    rotate: bool,
) -> None:
    """Register ROOM_ID's device (the room is added if needed): issue its MQTT credentials
    and ingest token, write its agent.toml and credential files, admit it at the broker.
    Prints agent.toml; the secrets are only in the files."""
    from gateway.devices.provisioning import Provisioning, ProvisioningError
    from gateway.devices.snippet import write_bundle

    _check_id(room_id, "device add")
    settings = state.settings
    out = out or settings.state_dir / "devices" / room_id
    with state.database() as db:
        try:
            added = Provisioning(settings, db).add(room_id, name, rotate)
        except ProvisioningError as exc:
            lines = [f"device add: {line}" for line in str(exc).splitlines()]
            raise Fatal("\n".join(lines)) from None
    for warning in added.warnings:
        click.echo(f"device add: warning: {warning}", err=True)
    config = write_bundle(added.bundle, out, install_dir or Path(settings.devices.install_dir))
    click.echo(f"device {room_id}: credentials issued; files in {out} (mode 0600)", err=True)
    if added.broker is not None:
        click.echo(f"broker: {added.broker}", err=True)
    _enrollment_lines(settings, added.enrollment)
    click.echo(config, nl=False)


def _enrollment_lines(settings: GatewaySettings, enrollment: Enrollment) -> None:
    """How the technician enrolls the device: the one-time code, the URL, the pin."""
    from gateway.devices.pin import gateway_certificate_pin

    url = settings.devices.gateway_url
    pin, why = gateway_certificate_pin(url)
    expires = datetime.fromtimestamp(enrollment.expires_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = f"room-agent enroll {url} {enrollment.code}" + (f" --pin {pin}" if pin else "")
    click.echo(f"enrollment code: {enrollment.code} (once, until {expires})", err=True)
    click.echo(f"on the device:   sudo {command}", err=True)
    if pin is None:
        click.echo(f"                 (no certificate to pin: {why})", err=True)


@device.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def device_list(state: CliState, as_json: bool) -> None:
    """Every room: its device's status (active, revoked, no-credentials) and credentials."""
    from gateway.devices.provisioning import Provisioning

    with state.database() as db:
        found = Provisioning(state.settings, db).list()
    for entry in found:
        if as_json:
            fields = {
                "id": entry.id,
                "name": entry.name,
                "status": entry.status,
                "credentials": entry.credential_kind,
                "issued_at": entry.credentials_issued_at,
                "revoked_at": entry.revoked_at,
            }
            click.echo(json.dumps(fields))
            continue
        issued = _when(entry.credentials_issued_at) if entry.credentials_issued_at else "-"
        click.echo(
            f"{entry.id}  {entry.status:14} {entry.credential_kind or '-':11} {issued}"
            f"  {entry.name or ''}".rstrip()
        )


@device.command("revoke")
@click.argument("room_id")
@click.pass_obj
def device_revoke(state: CliState, room_id: str) -> None:
    """Refuse ROOM_ID's device at ingest and at the broker, now (no restarts)."""
    from gateway.devices.provisioning import Provisioning, ProvisioningError

    with state.database() as db:
        try:
            broker = Provisioning(state.settings, db).revoke(room_id)
        except ProvisioningError as exc:
            raise Fatal(f"device revoke: {exc}") from None
    click.echo(f"device {room_id} revoked")
    if broker is not None:
        click.echo(f"broker: {broker}")


@device.command("unclaimed")
@click.argument("room_id", required=False)
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write each assembled one's audio, decrypted, to DIR/<session>.flac (or .ogg).",
)
@click.option(
    "--delete",
    "delete_ids",
    metavar="SESSION_ID",
    multiple=True,
    help="Delete these unclaimed sessions of ROOM_ID (audio, chunks, record) instead of"
    " listing: frees the device's ingest.max_unclaimed_sessions places. Repeatable.",
)
@click.pass_obj
def device_unclaimed(
    state: CliState, room_id: str | None, export_dir: Path | None, delete_ids: tuple[str, ...]
) -> None:
    """Sessions a device sent that no partner session claims (e.g. recorded with
    `room-agent record`): kept at the gateway (encrypted in the store), never uploaded.
    Newest first. A device may keep ingest.max_unclaimed_sessions of them here; export
    what is wanted, then --delete."""
    from gateway.ingest import records as ingest_records
    from gateway.sessions.audio_vault import AudioKeyError, export_audio, is_vault_ref, open_vault

    if delete_ids:
        if room_id is None:
            raise Fatal(
                "device unclaimed --delete: name the room: device unclaimed ROOM_ID --delete ID"
            )
        with state.database() as db:
            for session_id in delete_ids:
                click.echo(db.call(_delete_unclaimed, room_id, session_id))
        return
    with state.database() as db:
        with db.transaction(write=False) as conn:
            found = ingest_records.unclaimed(conn, room_id)
        for entry in found:
            where = entry.audio_path or "-"
            if export_dir is not None and is_vault_ref(entry.audio_path):
                assert entry.audio_path is not None
                try:
                    vault = open_vault(db, state.settings.audio_key_path)
                    where = str(export_audio(vault, entry.audio_path, export_dir, entry.session_id))
                except (AudioKeyError, OSError) as exc:
                    raise Fatal(f"device unclaimed --export: {exc}") from None
            click.echo(
                f"{entry.session_id}  {entry.device_id}  {entry.state:18}"
                f" {_when(entry.created_at)}  {where}"
            )


def _delete_unclaimed(conn: Connection, room_id: str, session_id: str) -> str:
    from gateway.ingest import records as ingest_records

    session = ingest_records.get_session(conn, session_id)
    if session is None or session.claimed or session.device_id != room_id:
        raise Fatal(
            f"device unclaimed --delete: {session_id} is not an unclaimed session of {room_id}"
            f" (room-gateway device unclaimed {room_id} lists them)"
        )
    if session.state == "assembling":
        raise Fatal(
            f"device unclaimed --delete: {session_id} is being assembled; try again in a moment"
        )
    ingest_records.delete_unclaimed(conn, session_id)
    return f"{session_id}: deleted"


@cli.command("broker-config")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory for mosquitto.conf, passwd and acl [default: state_dir/broker].",
)
@click.pass_obj
def broker_config(state: CliState, out: Path | None) -> None:
    """Write mosquitto's config, password file and ACL for the registered devices (each
    only its own four topics under rooms/<its id>/, the gateway all rooms/#). Later device
    changes keep them current. Run mosquitto with: mosquitto -c OUT/mosquitto.conf"""
    from gateway.devices.provisioning import Provisioning, ProvisioningError

    settings = state.settings
    out = out or settings.state_dir / "broker"
    with state.database() as db:
        try:
            written = Provisioning(settings, db).write_broker_config(out)
        except ProvisioningError as exc:
            raise Fatal(f"broker-config: {exc}") from None
    click.echo(f"{written.files.config}: written (with passwd and acl)")
    if written.password_file is not None:
        click.echo(f"gateway MQTT password: {written.password_file} (mode 0600)")
    if written.client_cert is not None:
        click.echo(f"gateway client certificate: {written.client_cert}")
    click.echo(f"broker: {written.broker}")


@cli.group()
def session() -> None:
    """Sessions, by id."""


@session.command("attach-audio")
@click.argument("session_id")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--content-type",
    type=click.Choice(sorted(CONTENT_TYPES)),
    default=None,
    help="Default: from the file name (.flac, .ogg, .opus).",
)
@click.pass_obj
def session_attach_audio(
    state: CliState, session_id: str, file: Path, content_type: str | None
) -> None:
    """Give a session its complete audio FILE and queue the upload (tests and demos;
    in production the room device's chunks are assembled into this file)."""
    from gateway.errors import GatewayError
    from gateway.sessions.audio_files import AudioRejected
    from gateway.sessions.audio_vault import AudioKeyError, open_vault
    from gateway.sessions.lifecycle import SessionLifecycle

    content_type = content_type or SUFFIX_TYPES.get(file.suffix.lower())
    if content_type is None:
        raise Fatal(f"session attach-audio: {file.name}: give --content-type")
    settings = state.settings
    lifecycle = SessionLifecycle(settings.jobs, settings.blueprint.environment)
    with state.database() as db:
        try:
            with db.transaction(write=False) as conn:
                lifecycle.get(conn, session_id)
            vault = open_vault(db, settings.audio_key_path)
            with file.open("rb") as source:
                ref = vault.store_file(session_id, source, settings.http.audio_max_bytes)
            with db.transaction() as conn:
                attached = lifecycle.attach_audio(conn, session_id, ref, content_type)
        except (GatewayError, AudioRejected, AudioKeyError, OSError) as exc:
            raise Fatal(f"session attach-audio: {exc}") from None
    click.echo(f"session {session_id} {attached.state}; upload queued")


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option("--callback-url", default=None, help="Where webhooks go (also: PUT /_sim/callback).")
@click.option("--public-url", default=None, help="Base of artifact URLs [default: as requested].")
@click.option("--processing-delay", type=float, default=0.5, show_default=True, help="Seconds.")
@click.option("--webhook-retry-interval", type=float, default=1.0, show_default=True)
@click.option("--token-lifetime", type=float, default=3600.0, show_default=True, help="Seconds.")
@click.option("--fail-next", type=int, default=0, help="Fail the next N calls.")
@click.option("--fail-status", type=click.IntRange(400, 599), default=500, show_default=True)
@click.option("--throttle-next", type=int, default=0, help="Answer the next N calls with 429.")
@click.option("--retry-after", type=int, default=1, show_default=True, help="429's Retry-After.")
@click.option("--latency-ms", type=int, default=0, help="Delay before answering each call.")
@click.option("--duplicate-webhooks", is_flag=True, help="Deliver every webhook twice.")
@click.option("--out-of-order-webhooks", is_flag=True, help="Note before transcript.")
@click.option("--transcript-error-next", type=int, default=0, help="Fail the next N sessions.")
@click.option("--log-level", default="info", show_default=True)
def simulator(host: str, port: int, log_level: str, **knobs: Any) -> None:
    """Run the Blueprint API simulator (the embedded default for demo and tests).

    Credentials are the simulator's defaults (sim-api-key, sim-client, sim-secret);
    its control API is under /_sim (see /docs).
    """
    from devtools.simulator.app import config_from_options, run

    try:
        config = config_from_options(**knobs)
    except ValueError as exc:
        raise Fatal(f"simulator: {exc}") from None
    run(config, host=host, port=port, log_level=log_level)


@cli.command()
@click.option(
    "--no-tty", is_flag=True, help="Plain lines as steps complete (also when not a terminal)."
)
@click.option("--keep", is_flag=True, help="Keep the state directory (config, logs, database).")
def demo(no_tty: bool, keep: bool) -> int:
    """Run the whole system locally, end to end, in about a minute: mosquitto, the Blueprint
    simulator, this gateway and a room agent capturing fictional speech through PortAudio;
    a session driven through the partner API; its progress note and timeline printed.

    Everything runs in a temporary state directory on free loopback ports (demos may run
    side by side). Exit status 0 when the note arrived, 1 when a step failed (its logs are
    shown), 130 on Ctrl-C (everything stopped first). Ignores --config.
    """
    import sys

    from devtools.demo.run import DemoOptions, run_demo

    return run_demo(DemoOptions(tty=not no_tty and sys.stdout.isatty(), keep=keep))


def main() -> None:
    # Everything this program creates (state, keys, the store, device bundles, exported
    # audio and the directories above them) is its user's alone, whatever umask the shell
    # or service manager gave it: systemd's UMask=0077 is not there when an operator runs
    # `room-gateway serve` or `device add --out` by hand.
    os.umask(0o077)
    run_program(
        cli,
        "room-gateway",
        permission_hint="run admin commands as the service's user room-gateway (sudo -u"
        " room-gateway room-gateway ..., the README's alias) or as root",
    )
