"""Real processes for tests: free loopback ports, services that are really killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10000  # below: the standard ports of services this machine may run


class _Ports:
    """Walks this process's share of the ports below the kernel's ephemeral range.

    ``bind(("127.0.0.1", 0))`` picks at random among the ephemeral ports: it may hand out
    one it handed out a moment ago (nothing has bound it yet), and an outgoing connection
    may take a handed-out port as its source port before the server binds it. A walk
    repeats no port until it has used them all, and no connection's source port comes
    from below the ephemeral range. pytest-xdist's workers walk separate shares."""

    def __init__(self) -> None:
        low, high = ephemeral_range()
        start, end = (LOWEST_PORT, low) if low - LOWEST_PORT >= 2000 else (high + 1, 65536)
        workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        share = (end - start) // workers
        self._start = start + share * (worker % workers)
        self._span = share
        self._next = os.getpid() % share  # two runs side by side start apart
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            for _ in range(self._span):
                port = self._start + self._next
                self._next = (self._next + 1) % self._span
                if _bindable(port):
                    return port
        raise RuntimeError(f"no free loopback port in {self._start}-{self._start + self._span}")


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (and ``bind`` to port 0)."""
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_ports: _Ports | None = None


def free_port() -> int:
    """A loopback port for a server the caller starts next: free now, never handed out
    before by this process, outside the range outgoing connections take ports from."""
    global _ports
    if _ports is None:
        _ports = _Ports()
    return _ports.take()


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for_http(url: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not answering after {timeout}s ({last})")


class Service:
    """A child process with its output in a log file; stopped (or SIGKILLed) on exit."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a power cut or the OOM killer would: no cleanup runs."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        if not self.alive():
            return self.proc.returncode if self.proc else None
        os.killpg(self.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
