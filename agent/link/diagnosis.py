"""What the gateway may ask a room device without anyone going there: a level check of its
microphone and its recent log lines (protocol/messages.py CheckCommand, LogsCommand; the
answers ride in CommandResult).

- check: `room-agent check`'s measurement, numbers and a verdict code only (no audio
  leaves the device); refused while a session records (the recording is never disturbed)
  or while the key or microphone make recording impossible anyway.
- logs: the agent's own log lines, kept in memory (:class:`LogRing`, the last
  ``RING_LINES``): the agent logs ids, codes and numbers only, never a name or a secret,
  so what it logged may leave; each line is cut to the protocol's limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Literal

from agent.pipeline.audio import AudioInputError
from agent.settings import AudioSettings
from protocol.messages import CheckCommand, LogLine, LogsCommand, RoomCheck

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
RING_LINES = 2000
MESSAGE_MAX = 500
# The answer must fit the broker's packet limit (broker-config: 64 KiB): the newest lines
# up to this many bytes of JSON.
ANSWER_MAX_BYTES = 48 * 1024


class LogRing(logging.Handler):
    """The latest log records of this process, for a logs command."""

    def __init__(self, size: int = RING_LINES) -> None:
        super().__init__(level=logging.DEBUG)
        self._lines: deque[tuple[float, LogLevel, str, str]] = deque(maxlen=size)
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        level = _LEVELS.get(record.levelname, "INFO")
        with self._guard:
            self._lines.append((record.created, level, record.name[:64], message[:MESSAGE_MAX]))

    def since(self, since_s: float, max_lines: int) -> list[LogLine]:
        """The newest ``max_lines`` of the last ``since_s`` seconds (at most
        ``ANSWER_MAX_BYTES`` of them), oldest first."""
        cutoff = time.time() - since_s
        with self._guard:
            recent = [line for line in self._lines if line[0] >= cutoff]
        lines: list[LogLine] = []
        size = 0
        for created, level, name, message in reversed(recent[-max_lines:]):
            line = LogLine(
                at=datetime.fromtimestamp(created, UTC), level=level, logger=name, message=message
            )
            size += len(line.model_dump_json()) + 1
            if size > ANSWER_MAX_BYTES:
                break
            lines.append(line)
        return lines[::-1]


_LEVELS: dict[str, LogLevel] = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARNING",
    "ERROR": "ERROR",
    "CRITICAL": "CRITICAL",
}


def install_log_ring() -> LogRing:
    """Attach a ring to the root logger (the daemon's, after its logging is configured)."""
    ring = LogRing()
    logging.getLogger().addHandler(ring)
    return ring


def room_check(
    settings: AudioSettings, command: CheckCommand
) -> tuple[RoomCheck | None, str | None]:
    """(the measurement, None) or (None, a refusal code)."""
    from agent.diagnostics.mic_check import run_check

    try:
        report = run_check(settings, command.seconds)
    except AudioInputError:
        return None, "microphone_unavailable"
    levels = report.levels
    return (
        RoomCheck(
            seconds=levels.seconds,
            rms_dbfs=levels.rms_dbfs,
            peak_dbfs=levels.peak_dbfs,
            speech_dbfs=levels.speech_dbfs,
            noise_floor_dbfs=levels.noise_floor_dbfs,
            snr_db=levels.snr_db,
            speech_share=min(1.0, max(0.0, levels.voiced_share)),
            clipped_share=min(1.0, max(0.0, levels.clipped_share)),
            verdict=report.verdict,
        ),
        None,
    )


def recent_logs(ring: LogRing | None, command: LogsCommand) -> list[LogLine]:
    return ring.since(command.since_s, command.max_lines) if ring is not None else []
