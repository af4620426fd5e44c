"""Event hooks, as the Wyoming satellite's ``--*-command`` options: a configured command per
event, run with the event's name, the room and the session id in its environment
(``ROOM_EVENT``, ``ROOM_ID``, ``ROOM_SESSION_ID``; ids only, never a name), no shell.

Hooks run one at a time on a thread of their own, each bounded by ``hook_timeout_s`` (then
killed); a failing or slow hook is logged and never delays or stops recording. Events
arriving while the queue is full are dropped (and logged): a hook is feedback, not data.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import subprocess
import threading

from agent.settings import FeedbackEvent

log = logging.getLogger(__name__)

QUEUE_MAX = 64


class Hooks:
    def __init__(self, commands: dict[FeedbackEvent, str], room_id: str, timeout_s: float) -> None:
        self.commands = {event: shlex.split(line) for event, line in commands.items() if line}
        self.room_id = room_id
        self.timeout_s = timeout_s
        self._queue: queue.Queue[tuple[FeedbackEvent, str | None] | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.commands:
            self._thread = threading.Thread(target=self._run_all, name="hooks", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(self.timeout_s + 1)

    def fire(self, event: FeedbackEvent, session_id: str | None) -> None:
        if event not in self.commands or self._thread is None:
            return
        try:
            self._queue.put_nowait((event, session_id))
        except queue.Full:
            log.warning("feedback: hook for %s dropped (hooks are behind)", event)

    def _run_all(self) -> None:
        while (item := self._queue.get()) is not None:
            self.run(*item)

    def run(self, event: FeedbackEvent, session_id: str | None) -> int | None:
        """Run the event's hook now; its exit status (None: not run, or timed out)."""
        argv = self.commands.get(event)
        if argv is None:
            return None
        env = {**os.environ, "ROOM_EVENT": event, "ROOM_ID": self.room_id,
               "ROOM_SESSION_ID": session_id or ""}  # fmt: skip
        try:
            done = subprocess.run(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            log.warning("feedback: hook for %s killed after %.0f s", event, self.timeout_s)
            return None
        except OSError as exc:
            log.warning("feedback: hook for %s not run (%s)", event, exc.strerror or exc)
            return None
        if done.returncode != 0:
            log.warning("feedback: hook for %s exited %d", event, done.returncode)
        return done.returncode
