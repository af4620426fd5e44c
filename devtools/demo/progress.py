"""What the demo shows while it runs: one line per step, with its elapsed time.

On a terminal the current step's line updates in place (a spinner, its live detail, a bar
while the speech plays, the seconds so far), redrawn by a small ticker thread so it moves
even while the demo waits on a command; each finished step stays as a line with a tick.
Elsewhere (a pipe, CI, ``--no-tty``) nothing is redrawn: a plain line is printed as each
step completes, prefixed by the seconds since the start, plus a line per notable event
(each chunk reaching the gateway), so a log reads as a timeline.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
BAR_WIDTH = 20
NAME_WIDTH = 22
TICK_S = 0.1
GREEN, RED, DIM, RESET = "\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m"
CLEAR_LINE = "\r\x1b[K"


class Progress:
    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._step: str | None = None
        self._step_started = self.started
        self._detail = ""
        self._fraction: float | None = None
        self._frame = 0
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if tty:
            self._ticker = threading.Thread(target=self._tick, name="demo-progress", daemon=True)
            self._ticker.start()

    def begin(self, step: str, detail: str = "") -> None:
        with self._lock:
            self._step = step
            self._step_started = time.monotonic()
            self._detail = detail
            self._fraction = None
            self._draw()

    def update(self, detail: str, fraction: float | None = None) -> None:
        """The current step's live detail (and, 0..1, how far it is); terminal only."""
        with self._lock:
            self._detail = detail
            self._fraction = fraction
            self._draw()

    def note(self, text: str) -> None:
        """An event inside the current step, kept as its own line."""
        with self._lock:
            if self.tty:
                self._write(f"{CLEAR_LINE}    {DIM}{text}{RESET}\n")
                self._draw()
            else:
                self._write(f"{self._stamp()}   {text}\n")

    def done(self, detail: str) -> float:
        """Finish the current step with a summary; returns its duration in seconds."""
        return self._finish(detail, ok=True)

    def failed(self, detail: str) -> float:
        return self._finish(detail, ok=False)

    def echo(self, text: str = "") -> None:
        """Plain output (the note, the timeline), below any live line."""
        with self._lock:
            if self.tty and self._step is not None:
                self._write(CLEAR_LINE)
            self._write(text + "\n")
            self._draw()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        with self._lock:
            if self.tty and self._step is not None:
                self._write(CLEAR_LINE)
            self._step = None

    @property
    def current(self) -> str | None:
        """The step under way, if any."""
        return self._step

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # --- drawing (called with the lock held) ----------------------------------------------

    def _finish(self, detail: str, ok: bool) -> float:
        with self._lock:
            step = self._step or "?"
            took = time.monotonic() - self._step_started
            self._step = None
            if self.tty:
                mark = f"{GREEN}✓{RESET}" if ok else f"{RED}✗{RESET}"
                line = (
                    f"{CLEAR_LINE}  {mark} {step:<{NAME_WIDTH}} {detail}  {DIM}{took:.1f} s{RESET}"
                )
            else:
                status = "" if ok else "FAILED: "
                line = f"{self._stamp()} {step:<{NAME_WIDTH}} {status}{detail} ({took:.1f} s)"
            self._write(line + "\n")
            return took

    def _draw(self) -> None:
        if not self.tty or self._step is None:
            return
        took = time.monotonic() - self._step_started
        spinner = SPINNER[self._frame % len(SPINNER)]
        bar = ""
        if self._fraction is not None:
            filled = round(max(0.0, min(1.0, self._fraction)) * BAR_WIDTH)
            bar = "█" * filled + "░" * (BAR_WIDTH - filled) + " "
        line = f"  {spinner} {self._step:<{NAME_WIDTH}} {bar}{self._detail}"
        width = shutil.get_terminal_size((100, 24)).columns
        suffix = f"  {took:.1f} s"
        # Never wrap: a wrapped line cannot be redrawn in place.
        line = line[: max(10, width - len(suffix) - 1)]
        self._write(f"{CLEAR_LINE}{line}{DIM}{suffix}{RESET}")

    def _tick(self) -> None:
        while not self._stop.wait(TICK_S):
            with self._lock:
                self._frame += 1
                self._draw()

    def _stamp(self) -> str:
        return f"[{self.elapsed():6.1f} s]"

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
