"""Which session commands the device has applied, so each command id is applied once.

The gateway sends its desired command again (same id) until the device's state shows it
applied: after a lost answer, a broker that forgot it, a gateway restart. A repeat is
answered with the first answer and not carried out again. The record is kept in
``<state_dir>/commands.json`` (atomically, after the command is carried out: a command cut
short by a crash is carried out again when re-sent, which is safe since start, stop, pause
and resume are each idempotent for their session), and the last id goes in the retained
state as ``last_command_id``. Ids and codes only.

The gateway numbers its decisions for the room (``generation``, only growing): once a
command of generation G is carried out, one of a lower generation is stale (it was
overtaken on its way: sent by another replica, or published after a later decision) and is
not carried out. The highest generation seen is kept with the ids.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.files import write_atomically

log = logging.getLogger(__name__)

FILE = "commands.json"
KEPT = 64  # ids remembered: far more than the gateway ever has open for one room


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ok: bool
    reason: str | None = None


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    last: str | None = None
    answers: dict[str, Answer] = Field(default_factory=dict)
    generation: int | None = None


class AppliedCommands:
    def __init__(self, state_dir: Path | None) -> None:
        """``state_dir`` None: kept in memory only (tests, tools)."""
        self._path = state_dir / FILE if state_dir is not None else None
        self._lock = threading.Lock()
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._last: str | None = None
        self._generation: int | None = None
        self._load()

    @property
    def last(self) -> str | None:
        with self._lock:
            return self._last

    def answer(self, command_id: str) -> Answer | None:
        """The answer given when ``command_id`` was applied; None if it never was."""
        with self._lock:
            return self._answers.get(command_id)

    def stale(self, generation: int | None) -> bool:
        """Is a command of ``generation`` older than one already carried out?"""
        with self._lock:
            return (
                generation is not None
                and self._generation is not None
                and generation < self._generation
            )

    def applied(
        self, command_id: str, ok: bool, reason: str | None, generation: int | None = None
    ) -> None:
        with self._lock:
            self._answers[command_id] = Answer(ok=ok, reason=reason)
            self._answers.move_to_end(command_id)
            while len(self._answers) > KEPT:
                self._answers.popitem(last=False)
            self._last = command_id
            if generation is not None:
                self._generation = max(generation, self._generation or 0)
            record = _Record(
                last=self._last, answers=dict(self._answers), generation=self._generation
            )
        self._save(record)

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            record = _Record.model_validate_json(self._path.read_bytes())
        except FileNotFoundError:
            return
        except (ValidationError, OSError):
            log.warning("control: %s is unreadable; applied commands forgotten", self._path.name)
            return
        self._answers = OrderedDict(record.answers)
        self._last = record.last
        self._generation = record.generation

    def _save(self, record: _Record) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_atomically(self._path, record.model_dump_json().encode())
        except OSError as exc:
            # Not fatal: a repeat is then carried out again, which each command allows.
            log.warning("control: applied commands not saved (%s)", type(exc).__name__)
