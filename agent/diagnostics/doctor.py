"""`room-agent doctor`: every check a technician would run, as one checklist with the fixes.

In order: the settings (config validate), the microphone (devices: does audio.device name
one that is there), its sound (a short `check` while someone talks), then everything
`status` looks at (the agent, the broker, the gateway, the spool, quarantine, the agent's
last error). Each item is ok, skipped (with why) or a problem with the concrete thing to
do. Settings that do not load end it at once: nothing else can be checked without them.

The sound check opens the microphone for a few seconds. It is skipped while the agent
records a session (the recording is never disturbed); when the agent is idle, a start
command arriving during those seconds could find the microphone busy, so `--no-check`
leaves it out when the room may be in use.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from agent.diagnostics.findings import START_SERVICE, Finding
from agent.diagnostics.mic_check import CheckReport, Verdict, run_check
from agent.diagnostics.status_report import StatusReport, gather
from agent.diagnostics.validate import summary, validate
from agent.pipeline.audio import AudioInputError
from agent.settings import AgentSettings
from runtime.settings import ConfigError

SOUND_FIXES: dict[Verdict, str] = {
    "good": "",
    "no_signal": "no sound arrives: check that audio.device names the room's microphone"
    " (room-agent devices), that it is not muted (alsamixer) and its cable",
    "clipping": "lower the microphone's gain (alsamixer) or move it away from the talkers",
    "too_quiet": "raise the microphone's gain (alsamixer) or move it closer to the talkers",
    "no_speech": "talk during the check: run room-agent doctor again while someone speaks",
    "noisy_room": "reduce the noise (fan, open window, ventilation) or move the microphone"
    " closer to the talkers",
}


class DoctorReport(BaseModel):
    """Everything `room-agent doctor --json` prints."""

    device_id: str
    config: str | None
    healthy: bool
    findings: list[Finding]
    check: CheckReport | None
    status: StatusReport


def diagnose(
    path: Path | None,
    check_seconds: float | None,
    before_check: Callable[[], None] = lambda: None,
    just_enrolled: bool = False,
) -> DoctorReport:
    """Run the checklist; raises ConfigError (one line per problem) if nothing loads.
    ``check_seconds`` None leaves out the sound check; ``before_check`` is called just
    before it starts (to ask the people in the room to talk). ``just_enrolled``: an agent
    that never ran is the next step (starting the service), not a problem."""
    settings, problems = validate(path, devices=False)
    if settings is None:
        raise ConfigError(problems)
    findings = config_findings(settings, path, problems)
    status = gather(settings, path)
    microphone, names = microphone_finding(settings)
    findings.append(microphone)
    check = None
    if check_seconds is None:
        findings.append(_skipped("sound", "not checked (--no-check)"))
    elif microphone.verdict != "ok":
        findings.append(_skipped("sound", "no microphone to check"))
    elif _recording(status) is not None:
        session = _recording(status)
        findings.append(_skipped("sound", f"the agent is recording {session}: not disturbed"))
    else:
        before_check()
        sound, check = sound_finding(settings, check_seconds, names)
        findings.append(sound)
    # Its own microphone item stands for status's (which is the running agent's view).
    findings += [finding for finding in status.findings if finding.item != "microphone"]
    if just_enrolled and status.agent.snapshot is None and not status.agent.running:
        findings = [
            _skipped("agent", f"not started yet: next, {START_SERVICE}")
            if finding.item == "agent"
            else finding
            for finding in findings
        ]
    return DoctorReport(
        device_id=settings.device_id,
        config=str(path) if path else None,
        healthy=all(f.verdict != "problem" for f in findings),
        findings=findings,
        check=check,
        status=status,
    )


def config_findings(
    settings: AgentSettings, path: Path | None, problems: list[str]
) -> list[Finding]:
    """One finding per problem line (they name the file or variable and the key)."""
    where = path.name if path else "the environment"
    fix = f"correct it in {where} (or the variable named), then: room-agent config validate"
    if not problems:
        name = str(path) if path else "defaults and environment"
        return [Finding(item="config", verdict="ok", summary=f"{name}: ok ({summary(settings)})")]
    return [Finding(item="config", verdict="problem", summary=line, fix=fix) for line in problems]


def microphone_finding(settings: AgentSettings) -> tuple[Finding, str]:
    """Whether audio.device names an input device present now; also the names there are."""
    from agent.pipeline.capture import choose_device, list_input_devices

    wanted = settings.audio.device
    try:
        found = list_input_devices()
    except AudioInputError as exc:
        return _problem("microphone", str(exc), "check the sound system: arecord -l"), ""
    names = ", ".join(repr(device.name) for device in found)
    if not found:
        fix = "plug in the room's USB microphone (check: arecord -l), then: room-agent devices"
        return _problem("microphone", "no input devices at all", fix), names
    try:
        device = choose_device(found, wanted)
    except AudioInputError:
        summary = f"no input device matches audio.device {wanted!r}"
        fix = f"set audio.device to a part of one of these names: {names}"
        return _problem("microphone", summary, fix), names
    return (
        Finding(
            item="microphone",
            verdict="ok",
            summary=f"{device.name!r} (input devices: {names})",
        ),
        names,
    )


def sound_finding(
    settings: AgentSettings, seconds: float, names: str
) -> tuple[Finding, CheckReport | None]:
    try:
        report = run_check(settings.audio, seconds)
    except AudioInputError as exc:
        fix = f"the microphone is busy or went away: close other recorders; devices: {names}"
        return _problem("sound", f"cannot capture: {exc}", fix), None
    text = f"{report.message} ({report.reason})"
    if report.good:
        return Finding(item="sound", verdict="ok", summary=text), report
    return _problem("sound", text, SOUND_FIXES[report.verdict]), report


def _recording(status: StatusReport) -> str | None:
    snap = status.agent.snapshot
    if status.agent.running and snap is not None and snap.recorder == "recording":
        return f"session {snap.session_id}"
    return None


def _problem(item: str, summary: str, fix: str) -> Finding:
    return Finding(item=item, verdict="problem", summary=summary, fix=fix)


def _skipped(item: str, summary: str) -> Finding:
    return Finding(item=item, verdict="skipped", summary=summary)


def format_doctor(report: DoctorReport) -> str:
    """The checklist: one line per item, the fix under each problem, a count at the end."""
    width = max(len(f.item) for f in report.findings)
    lines = [f"room-agent doctor: device {report.device_id}"]
    marks = {"ok": "ok", "problem": "PROBLEM", "skipped": "skipped"}
    for finding in report.findings:
        lines.append(f"{marks[finding.verdict]:<8} {finding.item:<{width}}  {finding.summary}")
        if finding.fix:
            lines.append(f"{'':<8} {'':<{width}}  fix: {finding.fix}")
    problems = sum(f.verdict == "problem" for f in report.findings)
    lines += ["", f"{problems} problem(s) to fix" if problems else "all ok"]
    return "\n".join(lines)
