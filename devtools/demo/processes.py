"""The demo's child processes: each in its own session and process group, with its output in
a log file, stopped in a given order and killed when it does not stop in time.

Own process groups because a terminal's Ctrl-C goes to the whole foreground group: the
children must not all die at once in random order; the demo stops them itself, the agent
first (so it closes its capture stream and spool cleanly), then the gateway, the simulator
and the broker. Every child runs in the demo's state directory (its cwd), so a process left
behind would be easy to find (/proc/PID/cwd) even without its pid.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import TypeVar

import httpx
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

T = TypeVar("T")
HOST = "127.0.0.1"
# Settings of the programs the demo runs come from its files only, never from the caller's
# environment (a developer's ROOM_GATEWAY_* would silently change the demo).
FOREIGN_ENV_PREFIXES = ("ROOM_GATEWAY_", "ROOM_AGENT_")
FOREIGN_ENV = ("CREDENTIALS_DIRECTORY", "STATE_DIRECTORY", "ALSA_CONFIG_PATH", "NOTIFY_SOCKET")


class ChildExited(Exception):
    """A child the demo needs has exited; ``child`` says which."""

    def __init__(self, child: Child) -> None:
        super().__init__(f"{child.name} exited (status {child.returncode})")
        self.child = child


class Child:
    """One long-running program of the demo."""

    def __init__(
        self, name: str, argv: Sequence[str], log_path: Path, cwd: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise ChildExited if it was started and is gone."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ChildExited(self)

    def stop(self, timeout: float, hurry: Callable[[], bool] = lambda: False) -> None:
        """SIGTERM to its group, then SIGKILL after ``timeout`` (or at once when ``hurry``)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline and not hurry():
                time.sleep(0.05)
        # The group too: anything the child started and left behind goes with it.
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def tail(self, lines: int = 12) -> list[str]:
        """The last lines of its log (the programs log ids and states, never names)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return text.rstrip("\n").splitlines()[-lines:]


def _signal_group(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without the programs' own settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(FOREIGN_ENV_PREFIXES) and key not in FOREIGN_ENV
    }
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports, all bound at once so none is picked twice;
    another demo starting at the same moment gets others from the kernel."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind((HOST, 0))
            ports.append(sock.getsockname()[1])
        return ports


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it returns something truthy; TimeoutError naming ``what``.

    Exceptions from ``condition`` (e.g. ChildExited) end the wait at once.
    """
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(interval),
        retry=retry_if_result(lambda value: not value),
    )
    try:
        return retrying(condition)  # type: ignore[return-value]
    except RetryError:
        raise TimeoutError(f"{what}: not within {timeout:.0f} s") from None


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False
