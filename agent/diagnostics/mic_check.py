"""`room-agent check`: is the configured microphone fit to record a session, and if not, why.

A technician runs it with someone talking in the room. It opens settings.audio through
MicrophoneSource (the recording's own code path: same device choice, rate, resampling),
measures for a few seconds (agent.diagnostics.levels), shows a live meter, and ends with one
verdict a person can act on and a script can test (exit status 0 only for "good").

Thresholds, for a USB conference microphone (MEMS capsules, -26 dBFS at 94 dB SPL, plus
the 20-30 dB of gain or AGC such devices apply) with a talker 1-2 m away in a therapy room:
conversational speech there reads about -35..-20 dBFS, the empty room about -70..-55 dBFS.

- no signal: less than half the requested audio arrived, or the level is under -80 dBFS
  (3 LSB RMS: below the self-noise of any live microphone and preamp; what a muted, unplugged
  or wrong ALSA input delivers), or every sample lies within 4 LSB (a stuck converter);
- clipping: more than 0.1% of samples at 99% of full scale. Saturated speech is flattened
  over many samples per syllable (20 dB too much gain clips ~6% of a 2 s test), while one
  click or a single touching peak stays far below 0.1%;
- too quiet: speech below -40 dBFS. webrtcvad loses speech as the level falls (measured
  on the test speech: 81% of frames voiced at -25 dBFS, 58% at -40, 19% at -50, 2% at
  -55), so -40 keeps 5 dB above where it misses half of it. When the VAD hears (almost)
  no speech, the sounds standing 10 dB above the noise floor are judged instead: under
  -40 dBFS they are speech too quiet to be recognised as such;
- no speech heard: no speech, and no sound above the floor or only loud sounds the VAD
  rejects (nobody talked; a steady noise or knocks only): the check needs someone talking;
- noisy room: speech less than 15 dB above the noise floor (the floor is the room's quiet
  moments, which reads 3-5 dB under the mean noise: 15 dB is about 10-12 dB true SNR, where
  the VAD starts dropping words and transcription errors climb);
- good otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Literal, TextIO

from pydantic import BaseModel

from agent.diagnostics.levels import LevelMeter, Measurements, Reading
from agent.pipeline.audio import SAMPLE_RATE
from agent.settings import AudioSettings

Verdict = Literal["good", "no_signal", "clipping", "too_quiet", "no_speech", "noisy_room"]
MESSAGES: dict[Verdict, str] = {
    "good": "good",
    "no_signal": "no signal: wrong device?",
    "clipping": "clipping: lower gain",
    "too_quiet": "too quiet: raise gain",
    "no_speech": "no speech heard: talk during the check",
    "noisy_room": "noisy room: reduce the noise or move the microphone closer",
}

MIN_CAPTURED_SHARE = 0.5
NO_SIGNAL_DBFS = -80.0
NO_SIGNAL_SPAN_LSB = 4
CLIPPED_SHARE_MAX = 0.001
QUIET_SPEECH_DBFS = -40.0
MIN_SPEECH_S = 0.3  # speech (or sound) needed before its level is judged: 10 frames
NOISY_SNR_DB = 15.0

# A live device delivers N seconds of audio in N seconds; beyond this much more, it stalled.
STALL_GRACE_S = 3.0
READ_TIMEOUT_S = 0.1
TTY_EVERY_S = 0.2  # meter redraws on a terminal, seconds of audio
LINE_EVERY_S = 1.0  # meter lines otherwise
METER_RANGE_DBFS = (-70.0, 0.0)
METER_WIDTH = 20


class CheckReport(BaseModel):
    """Everything `check --json` prints: device, losses, measurements and the verdict."""

    device: str
    device_rate: int
    requested_s: float
    overruns: int
    dropped_blocks: int
    dropped_s: float
    reopens: int
    levels: Measurements
    verdict: Verdict
    message: str
    reason: str  # the numbers behind the verdict, in one line

    @property
    def good(self) -> bool:
        return self.verdict == "good"


def judge(levels: Measurements, requested_s: float) -> tuple[Verdict, str]:
    """The verdict and the numbers behind it; the rules are in the module docstring."""
    for rule in (_no_signal, _clipping, _speech):
        found = rule(levels, requested_s)
        if found is not None:
            return found
    return "good", (
        f"speech at {levels.speech_dbfs} dBFS, {levels.snr_db} dB above the noise floor"
    )


def _no_signal(levels: Measurements, requested_s: float) -> tuple[Verdict, str] | None:
    if levels.seconds < MIN_CAPTURED_SHARE * requested_s:
        return "no_signal", f"the device delivered {levels.seconds:.1f} s of {requested_s:g} s"
    if levels.rms_dbfs < NO_SIGNAL_DBFS:
        return "no_signal", f"level {levels.rms_dbfs:.1f} dBFS, below {NO_SIGNAL_DBFS:g} dBFS"
    if levels.span_lsb <= NO_SIGNAL_SPAN_LSB:
        return "no_signal", f"every sample within {levels.span_lsb} LSB of the others"
    return None


def _clipping(levels: Measurements, requested_s: float) -> tuple[Verdict, str] | None:
    if levels.clipped_share > CLIPPED_SHARE_MAX:
        share = f"{levels.clipped_share:.2%}"
        return "clipping", f"{share} of samples at full scale (over {CLIPPED_SHARE_MAX:.1%})"
    return None


def _speech(levels: Measurements, requested_s: float) -> tuple[Verdict, str] | None:
    """Judged on the speech the VAD heard, else on the sounds it would not call speech."""
    if levels.voiced_s < MIN_SPEECH_S or levels.speech_dbfs is None:
        if levels.sound_s < MIN_SPEECH_S or levels.sound_dbfs is None:
            return "no_speech", "nothing but the room's steady noise"
        if levels.sound_dbfs < QUIET_SPEECH_DBFS:
            return "too_quiet", (
                f"sounds at {levels.sound_dbfs} dBFS, too quiet for the VAD to call speech"
            )
        return "no_speech", f"{levels.sound_s:.1f} s of sound, none of it speech to the VAD"
    if levels.speech_dbfs < QUIET_SPEECH_DBFS:
        return "too_quiet", f"speech at {levels.speech_dbfs} dBFS (under {QUIET_SPEECH_DBFS:g})"
    if levels.snr_db is not None and levels.snr_db < NOISY_SNR_DB:
        return "noisy_room", (
            f"speech {levels.snr_db} dB above the noise floor (under {NOISY_SNR_DB:g} dB)"
        )
    return None


def run_check(
    audio: AudioSettings,
    seconds: float,
    show: Callable[[Reading], None] | None = None,
    every_s: float = LINE_EVERY_S,
) -> CheckReport:
    """Capture ``seconds`` of audio from the configured device, measure it, judge it.

    Stops early only if the device stalls (no verdict is worth waiting forever). Raises
    AudioInputError when the device cannot be opened.
    """
    from agent.pipeline.capture import MicrophoneSource

    target = round(seconds * SAMPLE_RATE)
    step = max(1, round(every_s * SAMPLE_RATE))
    meter = LevelMeter(audio)
    with MicrophoneSource(audio) as source:
        deadline = time.monotonic() + seconds + STALL_GRACE_S
        next_show = step
        while meter.samples < target and time.monotonic() < deadline:
            block = source.read(timeout=READ_TIMEOUT_S)
            if block is None:
                break
            block = block[: target - meter.samples]
            # In pieces that end where a reading is due: a capture block (240 ms) does not
            # divide the meter's step, and a line says how much audio it measured.
            while len(block):
                cut = len(block) if show is None else min(len(block), next_show - meter.samples)
                meter.push(block[:cut])
                block = block[cut:]
                if show is not None and meter.samples >= next_show:
                    show(meter.reading())
                    next_show += step
        stats = source.stats
    levels = meter.finish()
    verdict, reason = judge(levels, seconds)
    return CheckReport(
        device=stats.device_name,
        device_rate=stats.device_rate,
        requested_s=seconds,
        overruns=stats.overruns,
        dropped_blocks=stats.dropped_blocks,
        dropped_s=round(stats.dropped_s, 3),
        reopens=stats.reopens,
        levels=levels,
        verdict=verdict,
        message=MESSAGES[verdict],
        reason=reason,
    )


class Meter:
    """The live meter: one line redrawn in place on a terminal, else a line per update."""

    def __init__(self, stream: TextIO, seconds: float) -> None:
        self.stream = stream
        self.seconds = seconds
        self.tty = stream.isatty()
        self._width = 0

    @property
    def every_s(self) -> float:
        return TTY_EVERY_S if self.tty else LINE_EVERY_S

    def show(self, reading: Reading) -> None:
        line = meter_line(reading, self.seconds)
        if self.tty:
            # Pad over the previous line's tail: no terminal escape codes needed.
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def end(self) -> None:
        """Leave the redrawn line standing, so what follows starts on a line of its own."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()


def meter_line(reading: Reading, seconds: float) -> str:
    floor = "  -" if reading.noise_floor_dbfs is None else f"{reading.noise_floor_dbfs:3.0f}"
    return (
        f"{reading.seconds:4.1f}/{seconds:g} s  {_bar(reading.rms_dbfs)} "
        f"level {reading.rms_dbfs:6.1f} dBFS  peak {reading.peak_dbfs:6.1f} dBFS  "
        f"clipped {reading.clipped}  speech {reading.voiced_share:4.0%}  "
        f"floor {floor} dBFS"
    )


def _bar(level_dbfs: float) -> str:
    low, high = METER_RANGE_DBFS
    filled = round((min(max(level_dbfs, low), high) - low) / (high - low) * METER_WIDTH)
    return "[" + "#" * filled + "-" * (METER_WIDTH - filled) + "]"


def format_summary(report: CheckReport) -> str:
    """The lines a technician reads at the end; the verdict last, where the eye lands."""
    m = report.levels
    speech = "none heard"
    if m.speech_dbfs is not None:
        speech = f"{m.voiced_share:.0%} of the time, at {m.speech_dbfs:.1f} dBFS"
    floor = "not measured" if m.noise_floor_dbfs is None else f"{m.noise_floor_dbfs:.1f} dBFS"
    snr = "" if m.snr_db is None else f" (speech {m.snr_db:.1f} dB above it)"
    return "\n".join(
        [
            f"device   {report.device or '-'} at {report.device_rate} Hz, {m.seconds:.1f} s"
            f" measured ({report.overruns} overruns, {report.dropped_blocks} blocks dropped)",
            f"level    {m.rms_dbfs:.1f} dBFS, peak {m.peak_dbfs:.1f} dBFS,"
            f" {m.clipped_samples} samples clipped ({m.clipped_share:.3%})",
            f"speech   {speech}; recording would keep {m.kept_share:.0%}",
            f"floor    {floor}{snr}",
            f"verdict  {report.message} ({report.reason})",
        ]
    )


def print_report(report: CheckReport, as_json: bool, out: TextIO = sys.stdout) -> None:
    out.write((report.model_dump_json() if as_json else format_summary(report)) + "\n")
    out.flush()
