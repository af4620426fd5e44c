#!/usr/bin/python3
"""A stand-in for systemctl inside a fresh root (a chroot, where systemd cannot run).

The fresh-root test installs it as /usr/local/bin/systemctl so that the README's
``systemctl`` lines run as written. It does what those lines need of systemd, from the
installed unit files and their drop-ins, and nothing more:

- ``ExecStartPre=`` / ``ExecStart=`` (an empty value resets the list, as in systemd), run
  as ``User=`` / ``Group=`` / ``SupplementaryGroups=`` (setpriv) with ``UMask=``;
- ``StateDirectory=`` and ``LogsDirectory=`` made and owned by the user, with their
  environment variables; ``LoadCredential=`` copied to /run/credentials/UNIT, readable by
  the user only, and ``CREDENTIALS_DIRECTORY``;
- ``ExecReload=`` with ``$MAINPID``; stop with SIGTERM then SIGKILL after
  ``TimeoutStopSec=``.

The hardening directives are not applied (systemd-analyze verify checks them elsewhere),
nor Restart= nor the watchdog. Each unit's output goes to /var/log/field/UNIT.log.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
LISTS = {"ExecStartPre", "ExecStart", "ExecReload", "LoadCredential", "Environment"}
PIDS = Path("/run/field")
LOGS = Path("/var/log/field")
SETTLE_S = 1.5  # a unit still running this long after its start counts as started


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = {a for a in argv if a.startswith("-")}
    if not args:
        print("systemctl (fresh-root stand-in): a command is needed", file=sys.stderr)
        return 2
    command, units = args[0], [u if "." in u else f"{u}.service" for u in args[1:]]
    if command == "daemon-reload":
        return 0
    status = 0
    for unit in units:
        if command == "enable":
            wants = Path("/etc/systemd/system/multi-user.target.wants")
            wants.mkdir(parents=True, exist_ok=True)
            (wants / unit).unlink(missing_ok=True)
            (wants / unit).symlink_to(unit_file(unit))
            print(f"Created symlink {wants / unit} -> {unit_file(unit)}.")
            if "--now" in flags:
                status |= start(unit)
        elif command == "start":
            status |= start(unit)
        elif command == "restart":
            stop(unit)
            status |= start(unit)
        elif command == "stop":
            stop(unit)
        elif command == "reload":
            status |= reload(unit)
        elif command in ("status", "is-active"):
            running = pid_of(unit) is not None
            print(f"{unit}: {'active (running)' if running else 'inactive (dead)'}")
            status |= 0 if running else 3
        else:
            print(f"systemctl (fresh-root stand-in): {command} is not emulated", file=sys.stderr)
            return 2
    return status


def unit_file(unit: str) -> Path:
    for directory in UNIT_DIRS:
        if (directory / unit).is_file():
            return directory / unit
    raise SystemExit(f"Unit {unit} not found.")


def load(unit: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit and its drop-ins, in systemd's order."""
    files = [unit_file(unit)]
    for directory in UNIT_DIRS:
        files += sorted((directory / f"{unit}.d").glob("*.conf"))
    settings: dict[str, list[str]] = {}
    for path in files:
        section = ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
                continue
            if section != "[Service]" or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            if key in LISTS:
                settings[key] = [] if not value else [*settings.get(key, []), value]
            else:
                settings[key] = [value]
    return settings


def one(settings: dict[str, list[str]], key: str, default: str = "") -> str:
    return settings.get(key, [default])[-1]


def pid_of(unit: str) -> int | None:
    path = PIDS / f"{unit}.pid"
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def start(unit: str) -> int:
    if pid_of(unit) is not None:
        return 0
    settings = load(unit)
    user = one(settings, "User", "root")
    group = one(settings, "Group", grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name)
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
    }
    for assignment in settings.get("Environment", []):
        for item in shlex.split(assignment):
            key, _, value = item.partition("=")
            env[key] = value
    for key, base, variable in (
        ("StateDirectory", "/var/lib", "STATE_DIRECTORY"),
        ("LogsDirectory", "/var/log", "LOGS_DIRECTORY"),
    ):
        if key in settings:
            directory = Path(base) / one(settings, key)
            directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(directory, user, group)
            directory.chmod(int(one(settings, f"{key}Mode", "0755"), 8))
            env[variable] = str(directory)
    if settings.get("LoadCredential"):
        credentials = Path("/run/credentials") / unit
        shutil.rmtree(credentials, ignore_errors=True)
        credentials.mkdir(parents=True)
        for entry in settings["LoadCredential"]:
            name, _, source = entry.partition(":")
            if not Path(source).is_file():
                print(
                    f"{unit}: Failed to load credential {name}: {source} missing", file=sys.stderr
                )
                return 1
            shutil.copyfile(source, credentials / name)
            (credentials / name).chmod(0o400)
            shutil.chown(credentials / name, user, group)
        credentials.chmod(0o500)
        shutil.chown(credentials, user, group)
        env["CREDENTIALS_DIRECTORY"] = str(credentials)
    groups = [group, *one(settings, "SupplementaryGroups").split()]
    as_user = [
        "setpriv",
        f"--reuid={user}",
        f"--regid={group}",
        f"--groups={','.join(groups)}",
        "--",
    ]
    umask = int(one(settings, "UMask", "0022"), 8)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{unit}.log", "ab")  # noqa: SIM115 (the child keeps it)
    for command in settings.get("ExecStartPre", []):
        done = run(command, as_user, env, umask, log)
        if done != 0 and not command.startswith("-"):
            print(f"Job for {unit} failed: ExecStartPre exited {done}", file=sys.stderr)
            return 1
    argv = shlex.split(one(settings, "ExecStart"))
    child = subprocess.Popen(
        [*as_user, *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: os.umask(umask),
    )
    PIDS.mkdir(parents=True, exist_ok=True)
    (PIDS / f"{unit}.pid").write_text(str(child.pid))
    time.sleep(SETTLE_S)
    if child.poll() is not None:
        tail = (LOGS / f"{unit}.log").read_text(errors="replace").splitlines()[-10:]
        print(
            f"Job for {unit} failed (exit {child.returncode}):", *tail, sep="\n  ", file=sys.stderr
        )
        return 1
    return 0


def run(command: str, as_user: list[str], env: dict[str, str], umask: int, log) -> int:
    privileged = command.lstrip("-@:!").startswith("+")
    argv = shlex.split(command.lstrip("-@:!+"))
    prefix = [] if privileged else as_user
    return subprocess.run(
        [*prefix, *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=lambda: os.umask(umask),
    ).returncode  # fmt: skip


def stop(unit: str) -> None:
    pid = pid_of(unit)
    if pid is None:
        return
    timeout = float(one(load(unit), "TimeoutStopSec", "90").rstrip("s"))
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    (PIDS / f"{unit}.pid").unlink(missing_ok=True)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie of a stand-in that exited is gone too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def reload(unit: str) -> int:
    pid = pid_of(unit)
    if pid is None:
        print(f"{unit} is not active, cannot reload.", file=sys.stderr)
        return 1
    commands = load(unit).get("ExecReload", [])
    if not commands:
        print(f"{unit} has no ExecReload.", file=sys.stderr)
        return 1
    for command in commands:
        argv = [str(pid) if a == "$MAINPID" else a for a in shlex.split(command)]
        subprocess.run(argv, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
