"""Make the broker read its password file and ACL again, without a restart.

mosquitto re-reads both on SIGHUP and then disconnects every client whose credentials no
longer hold, so a revoked device is cut off at once (not only refused at its next
connection). The pid comes from the ``pid_file`` the config names; a broker run elsewhere
(another host, a systemd unit with its own config) is reloaded by ``broker.reload_command``
instead, e.g. ``["systemctl", "reload", "mosquitto"]``.
"""

from __future__ import annotations

import os
import signal
import subprocess

from gateway.devices.broker_files import BrokerFiles, broker_pid

RELOAD_TIMEOUT_S = 30.0


class ReloadError(Exception):
    """The broker could not be told; the message says why (no secrets involved)."""


def reload_broker(files: BrokerFiles, command: list[str]) -> str:
    """Reload; returns what was done, for the technician."""
    if command:
        return _run(command)
    pid = broker_pid(files)
    if pid is None:
        return f"no broker running from {files.config} (it reads the files when it starts)"
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise ReloadError(
            f"not allowed to signal the broker (pid {pid}); set broker.reload_command"
        ) from None
    except ProcessLookupError:
        return f"the broker (pid {pid}) has exited; it reads the files when it starts"
    return f"broker reloaded (SIGHUP to pid {pid})"


def _run(command: list[str]) -> str:
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=RELOAD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ReloadError(f"broker.reload_command failed: {type(exc).__name__}") from None
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
        raise ReloadError(
            f"broker.reload_command exited with status {result.returncode}: {last[0][:200]}"
        )
    return f"broker reloaded ({' '.join(command)})"
