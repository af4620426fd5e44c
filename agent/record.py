"""`room-agent record`: one session from the microphone (or a file) into the spool.

Kept out of cli.py so the command stays a thin parser. Everything a person can get wrong
(no key, a bad input file, a busy spool, a full spool) becomes one Fatal line before any
audio is taken; SIGTERM and SIGINT end the session cleanly, closing it with reason
"stopped", so a service stop never leaves an interrupted session behind.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import click
from pydantic import BaseModel

from agent.pipeline.audio import AudioInputError, AudioSource
from agent.pipeline.recorder import Recorder, RecorderError
from agent.pipeline.seal import SealingKeyError
from agent.settings import AgentSettings
from agent.spool import Spool, SpoolError, SpoolFull
from protocol.manifest import CloseReason
from protocol.messages import RecorderState
from runtime.cli import Fatal

WAIT_STEP_S = 0.2


class RecordSummary(BaseModel):
    """The one line `record` prints: ids and numbers only."""

    session_id: str | None
    resumed: bool
    state: RecorderState
    reason: CloseReason | None
    last_error: str | None
    detail: str | None
    chunks: int
    speech_s: float
    unspooled_s: float


def record_session(
    settings: AgentSettings,
    input_file: Path | None,
    seconds: float | None,
    session_id: str | None,
    new_session: bool,
    realtime: bool,
) -> RecordSummary:
    """Record, print the summary line, and raise Fatal unless the session ended normally."""
    with closing(_open_source(settings, input_file, realtime)) as source:
        try:
            spool = Spool.open(settings.spool_dir, settings.spool)
        except SpoolError as exc:
            raise Fatal(str(exc)) from None
        with spool:
            recorder = _record(settings, spool, source, session_id, new_session, seconds)
    summary = RecordSummary.model_validate(recorder.state.model_dump(exclude={"capture"}))
    click.echo(summary.model_dump_json(exclude={"detail"}))
    if summary.reason != "stopped":
        raise Fatal(
            f"{summary.detail or summary.last_error}: recording stopped; "
            f"the {summary.chunks} chunks spooled are kept"
        )
    return summary


def _record(
    settings: AgentSettings,
    spool: Spool,
    source: AudioSource,
    session_id: str | None,
    new_session: bool,
    seconds: float | None,
) -> Recorder:
    """One session from start to close (or to the first error), in the given spool."""
    try:
        recorder = Recorder(settings, spool, lambda: source)
    except SealingKeyError as exc:
        raise Fatal(str(exc)) from None
    target = _choose_session(recorder, session_id, new_session)
    with _stop_on_signals(recorder):
        try:
            recorder.start(target, max_audio_s=seconds)
        except SpoolFull as exc:
            raise Fatal(f"{exc}; nothing recorded") from None
        except (AudioInputError, RecorderError, SpoolError) as exc:
            raise Fatal(str(exc)) from None
        while not recorder.wait(WAIT_STEP_S):
            pass
    return recorder


def _open_source(settings: AgentSettings, input_file: Path | None, realtime: bool) -> AudioSource:
    try:
        if input_file is not None:
            from agent.pipeline.filesource import FileSource

            return FileSource(input_file, realtime=realtime)
        from agent.pipeline.capture import MicrophoneSource

        return MicrophoneSource(settings.audio)
    except AudioInputError as exc:
        raise Fatal(str(exc)) from None


def _choose_session(recorder: Recorder, session_id: str | None, new_session: bool) -> str | None:
    """None: resume the interrupted session if there is one, else a new generated id."""
    interrupted = recorder.interrupted_session
    if new_session:
        recorder.close_interrupted()
    elif interrupted is not None and session_id not in (None, interrupted):
        raise Fatal(
            f"session {interrupted} was interrupted and would be resumed; "
            f"pass --new-session to close it and start {session_id}"
        )
    return session_id


@contextmanager
def _stop_on_signals(recorder: Recorder) -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        recorder.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
