"""room-agent: the room device's command line.

Every expected failure (bad config, bad input file, no device) ends as one line on stderr
and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agent import CONFIG_ENV
from runtime.cli import Fatal, SettingsContext, config_option, run_program

if TYPE_CHECKING:
    from agent.settings import AgentSettings

# Start-up matters (a technician waits for each command; a Pi is 5-10x slower than a
# laptop): numpy, pydantic-settings, PortAudio and httpx are imported by the commands that
# use them, not here (tests/benchmarks/cli_startup.py measures it).
DEFAULT_CONFIG = "/etc/room-audio/agent.toml"  # where room-agent.service reads it


def _load(path: Path | None) -> AgentSettings:
    from agent.settings import load_agent_settings

    return load_agent_settings(path)


class CliState(SettingsContext["AgentSettings"]):
    def __init__(self, config_path: Path | None) -> None:
        super().__init__(config_path, _load)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@config_option(CONFIG_ENV)
@click.option(
    "-v", "--verbose", is_flag=True, help="Log what happens (debug level, sound system's too)."
)
@click.version_option(package_name="room-audio", prog_name="room-agent")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """The room device: captures speech, seals it and spools it for the gateway."""
    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = CliState(config_path)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.pass_obj
def segment(state: CliState, file: Path) -> None:
    """Print the speech segments VAD keeps in FILE (WAV or FLAC), as one JSON object."""
    settings = state.settings
    from agent.pipeline.audio import SAMPLE_RATE, AudioInputError
    from agent.pipeline.filesource import FileSource
    from agent.pipeline.vad import Segmenter, merge_spans

    segmenter = Segmenter(settings.audio)
    chunks = []
    try:
        with FileSource(file) as source:
            while (block := source.read()) is not None:
                chunks.extend(segmenter.push(block))
            chunks.extend(segmenter.flush())
    except AudioInputError as exc:
        raise Fatal(str(exc)) from None
    spans = merge_spans(chunks)
    result = {
        "file": str(file),
        "sample_rate": SAMPLE_RATE,
        "duration_s": round(source.stats.samples / SAMPLE_RATE, 3),
        "kept_s": round(sum(end - start for start, end in spans), 3),
        "segments": [{"start": round(s, 3), "end": round(e, 3)} for s, e in spans],
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for scripts.")
def devices(as_json: bool) -> None:
    """List the audio input devices: what audio.device can name (by a part of the name)."""
    from agent.pipeline.audio import AudioInputError
    from agent.pipeline.capture import list_input_devices

    try:
        found = list_input_devices()
    except AudioInputError as exc:
        raise Fatal(str(exc)) from None
    if as_json:
        json.dump([device.model_dump() for device in found], sys.stdout)
        sys.stdout.write("\n")
        return
    if not found:
        click.echo("no input devices found")
        return
    width = max(len("name"), *(len(device.name) for device in found))
    click.echo(f"{'index':>5}  {'name':<{width}}  {'default rate':>12}  {'channels':>8}")
    for d in found:
        click.echo(
            f"{d.index:>5}  {d.name:<{width}}  {d.default_rate:>9} Hz  {d.max_input_channels:>8}"
        )


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=1, max=600),
    default=10.0,
    show_default=True,
    help="Seconds of audio to measure.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def check(state: CliState, seconds: float, as_json: bool) -> None:
    """Measure the configured microphone while someone talks, and judge it.

    Opens audio.device as recording does, shows a live meter on stderr (level, peak,
    clipped samples, speech share, noise floor), then a summary and a verdict: good, no
    signal, clipping, too quiet, no speech heard, or noisy room. Exit status 0 for good,
    1 for any other verdict, 2 on errors (no such device, bad config), 130 on Ctrl-C.
    """
    from agent.diagnostics.mic_check import Meter, print_report, run_check
    from agent.pipeline.audio import AudioInputError

    settings = state.settings
    meter = Meter(sys.stderr, seconds)
    show = meter.show if meter.tty or not as_json else None
    try:
        report = run_check(settings.audio, seconds, show, meter.every_s)
    except AudioInputError as exc:
        raise Fatal(str(exc)) from None
    finally:
        meter.end()
    print_report(report, as_json)
    if not report.good:
        sys.exit(1)


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds of captured audio.",
)
@click.option("--until-eof", is_flag=True, help="Stop at the end of --input (as any file does).")
@click.option(
    "--input",
    "input_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Record from a WAV/FLAC file instead of the microphone.",
)
@click.option("--session", "session_id", default=None, help="Id for a new session.")
@click.option(
    "--new-session",
    is_flag=True,
    help="Close an interrupted session (reason interrupted) instead of resuming it.",
)
@click.option("--realtime", is_flag=True, help="Feed --input at the pace of real time.")
@click.pass_obj
def record(
    state: CliState,
    seconds: float | None,
    until_eof: bool,
    input_file: Path | None,
    session_id: str | None,
    new_session: bool,
    realtime: bool,
) -> None:
    """Record one session into the spool; print a one-line JSON summary at the end.

    A session interrupted by a crash or power cut is resumed unless --new-session is given.
    SIGTERM or SIGINT ends the session cleanly. Exit status 2 when the spool filled up or
    recording failed: what was spooled before is kept.
    """
    from agent.record import record_session

    if until_eof and input_file is None:
        raise Fatal("--until-eof needs --input")
    if until_eof and seconds is not None:
        raise Fatal("--until-eof and --seconds exclude each other")
    if realtime and input_file is None:
        raise Fatal("--realtime needs --input")
    record_session(state.settings, input_file, seconds, session_id, new_session, realtime)


@cli.command()
@click.pass_obj
def run(state: CliState) -> None:
    """Run the room agent service until SIGTERM or SIGINT (exit status 0).

    Records when the gateway sends a start over MQTT (agent.mqtt), uploads every chunk to
    the gateway as soon as it is spooled (agent.link), and reports state, events and
    heartbeats. A session interrupted by a crash or power cut is resumed at once; on
    SIGTERM a session being recorded is suspended, not closed, and resumed at the next
    start. Without a gateway it records only; without a broker it takes no commands.
    """
    from agent.daemon import run_agent

    run_agent(state.settings, lambda: _load(state.config_path))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def status(state: CliState, as_json: bool) -> None:
    """Is this device doing its job, and if not, what to do.

    The agent (running? MQTT connected, last heartbeat, uplink, last error, from the
    status file it keeps), the broker and the gateway (reachable from here, and do they
    accept this device's credentials?), the spool (backlog, quarantined files). Changes
    nothing. Exit status 0 when healthy, 1 when something needs fixing (each problem
    with its fix), 2 when the settings do not load.
    """
    from agent.diagnostics.status_report import format_status, gather
    from agent.diagnostics.validate import config_path

    report = gather(state.settings, config_path(None, state.config_path))
    click.echo(report.model_dump_json() if as_json else format_status(report))
    if not report.healthy:
        sys.exit(1)


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=1, max=60),
    default=3.0,
    show_default=True,
    help="Seconds of sound to measure (someone should talk).",
)
@click.option("--no-check", is_flag=True, help="Leave out the sound check (room in use).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def doctor(state: CliState, seconds: float, no_check: bool, as_json: bool) -> None:
    """Run every check (config validate, devices, a short check, status) and print what
    to fix: a checklist of ok / PROBLEM / skipped items, each problem with its fix.

    Exit status 0 when all is well, 1 when something needs fixing, 2 when the settings
    do not even load.
    """
    from agent.diagnostics.doctor import diagnose, format_doctor
    from agent.diagnostics.validate import config_path
    from runtime.settings import ConfigError

    def prompt() -> None:
        if not as_json:
            click.echo(f"sound check: talk in the room for {seconds:g} s ...", err=True)

    try:
        report = diagnose(
            config_path(None, state.config_path), None if no_check else seconds, prompt
        )
    except ConfigError as exc:
        raise Fatal(str(exc)) from None
    click.echo(report.model_dump_json() if as_json else format_doctor(report))
    if not report.healthy:
        sys.exit(1)


@cli.command()
@click.argument("url")
@click.argument("code")
@click.option(
    "--pin", default=None, help="The gateway certificate's sha256:... (device add prints it)."
)
@click.option(
    "--ca-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Trust this CA for the gateway's certificate (instead of --pin or the system's).",
)
@click.option(
    "--credentials-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where the credential files go (room-agent.service loads them from there)"
    " [default: /etc/room-audio/credentials].",
)
@click.option("--no-doctor", is_flag=True, help="Do not run doctor's checks afterwards.")
@click.pass_obj
def enroll(
    state: CliState,
    url: str,
    code: str,
    pin: str | None,
    ca_file: Path | None,
    credentials_dir: Path | None,
    no_doctor: bool,
) -> None:
    """Set this device up from the gateway at URL with the one-time CODE that
    `room-gateway device add` printed: its settings (--config, default
    /etc/room-audio/agent.toml), credentials and the gateway's sealing key, over HTTPS,
    pinned to --pin. Then runs doctor's checks (no sound check); exit status 0 when all is
    well, 1 when something needs fixing, 2 when enrollment failed.
    """
    import os

    from agent.enroll import enroll as fetch
    from runtime.secrets import CREDENTIALS_ENV, INSTALLED_CREDENTIALS

    credentials_dir = credentials_dir or Path(INSTALLED_CREDENTIALS)
    config = state.config_path or Path(DEFAULT_CONFIG)
    files = fetch(url, code, pin, ca_file, config, credentials_dir)
    click.echo(
        f"device {files.device_id} enrolled: {config}, credentials in {credentials_dir}",
        err=True,
    )
    if no_doctor:
        return
    from agent.diagnostics.doctor import diagnose, format_doctor
    from runtime.settings import ConfigError

    os.environ[CREDENTIALS_ENV] = str(credentials_dir)  # as the unit will give them
    try:
        report = diagnose(config, None, just_enrolled=True)
    except ConfigError as exc:
        raise Fatal(str(exc)) from None
    click.echo(format_doctor(report))
    click.echo(
        "next: sudo systemctl enable --now room-agent (already running: sudo systemctl"
        " reload room-agent)",
        err=True,
    )
    if not report.healthy:
        sys.exit(1)


@cli.group()
def spool() -> None:
    """The on-disk queue of sealed chunks waiting for the gateway."""


@spool.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_obj
def verify(state: CliState, as_json: bool) -> None:
    """Check the spool: chunks per session, bytes, quarantined files.

    Torn and corrupt files are quarantined (moved aside, never deleted) and reported. While
    another room-agent holds the spool, nothing is changed. Exit status: 0 when nothing is
    in quarantine, 1 when quarantined files exist (they may hold sealed audio: a person
    decides what happens to them), 2 on errors.
    """
    from agent.spool import format_report, spool_report

    settings = state.settings
    try:
        report = spool_report(
            settings.spool_dir, settings.spool.max_bytes, settings.spool.min_free_bytes
        )
    except OSError as exc:
        raise Fatal(f"{settings.spool_dir}: {exc.strerror}") from None
    click.echo(report.model_dump_json() if as_json else format_report(report))
    if report.quarantine:
        sys.exit(1)


@cli.command()
@click.argument("switch", type=click.Choice(["on", "off", "status"]), default="status")
@click.pass_obj
def privacy(state: CliState, switch: str) -> None:
    """The room's "do not record" switch: on refuses starts (and pauses a session being
    recorded) until off. The running agent follows within a second and its state shows
    it to the gateway. privacy.do_not_record = true in the settings keeps it on for good.
    """
    from agent.privacy import PrivacySwitch, set_flag

    settings = state.settings
    if switch != "status":
        try:
            set_flag(settings.state_dir, switch == "on")
        except OSError as exc:
            raise Fatal(f"{settings.state_dir}: {exc.strerror}") from None
    engaged = PrivacySwitch(settings.state_dir, settings.privacy.do_not_record).engaged
    why = " (privacy.do_not_record in the settings)" if settings.privacy.do_not_record else ""
    click.echo(f"do not record: {'on' if engaged else 'off'}{why}")


@cli.group()
def feedback() -> None:
    """The room's feedback: indicators, cues, button, hooks (agent.feedback)."""


@feedback.command("test")
@click.option("--seconds", default=1.5, show_default=True, type=click.FloatRange(0, 60),
              help="How long each state is shown.")  # fmt: skip
@click.option("--cues/--no-cues", "with_cues", default=True, show_default=True,
              help="Play each cue too (even with cues.enabled off).")  # fmt: skip
@click.pass_obj
def feedback_test(state: CliState, seconds: float, with_cues: bool) -> None:
    """Cycle every indicator through each state, and play each cue, so a technician sees
    and hears them work. Prints each step; exit status 1 if a configured part failed."""
    import time

    from agent.feedback.cues import CUES, CuePlayer
    from agent.feedback.hub import build_indicators
    from agent.feedback.indicator import Indicators
    from agent.feedback.states import ROOM_STATES

    settings = state.settings
    feedback_settings = settings.feedback
    drivers = build_indicators(settings)
    configured = len(feedback_settings.sysfs_leds) + bool(feedback_settings.gpio.led_pins)
    configured += bool(feedback_settings.apa102.device)
    click.echo(f"indicators: {', '.join(d.name for d in drivers) or 'none configured'}")
    indicators = Indicators(drivers)
    try:
        for room_state in ROOM_STATES:
            click.echo(f"showing {room_state}")
            indicators.show(room_state)
            time.sleep(seconds)
    finally:
        indicators.close()
    failed = configured - len(drivers)
    if with_cues:
        cue_settings = feedback_settings.cues.model_copy(update={"enabled": True})
        try:
            player = CuePlayer(cue_settings)
        except (OSError, ValueError) as exc:
            raise Fatal(f"agent.feedback.cues: {exc}") from None
        for cue in CUES:
            click.echo(f"cue {cue} on {cue_settings.device!r}")
            try:
                from agent.feedback.cues import play_pcm

                play_pcm(player.samples[cue], cue_settings.device)
            except Exception as exc:
                click.echo(f"  not played: {exc}", err=True)
                failed += 1
                break
    if failed:
        sys.exit(1)


@cli.group()
def config() -> None:
    """Check the settings."""


@config.command("validate")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False), required=False)
@click.option(
    "--devices",
    "check_devices",
    is_flag=True,
    help="Also check that audio.device names an input device present now (uses PortAudio).",
)
@click.pass_obj
def config_validate(state: CliState, file: Path | None, check_devices: bool) -> None:
    """Check FILE (else --config, else $ROOM_AGENT_CONFIG) with the environment on top.

    Beyond loading: the gateway key decodes, the state dir can be written, the gateway URL
    and the broker have their credentials, TLS files load. Prints every problem, one line
    each (exit status 2), or "FILE: ok".
    """
    from agent.diagnostics.validate import config_path, summary, validate

    path = config_path(file, state.config_path)
    settings, problems = validate(path, check_devices)
    if problems or settings is None:
        raise Fatal("\n".join(problems))
    click.echo(f"{path or 'defaults and environment'}: ok ({summary(settings)})")


def main() -> None:
    # Everything the agent creates (state, spool, status) is private to its user, also
    # outside systemd (whose unit sets UMask=0077) under a shell's 0022; files meant for
    # others (enroll's config) get their mode explicitly.
    os.umask(0o077)
    run_program(
        cli,
        "room-agent",
        permission_hint="run it as root (sudo), as the README's alias does",
    )
