"""The command-line error convention of both programs."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import click

S = TypeVar("S")


class Fatal(click.ClickException):
    """An error a person can act on: one line on stderr, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"{Path(sys.argv[0]).name}: {self.format_message()}", err=True)


def run_program(group: click.Group, prog_name: str, permission_hint: str = "") -> None:
    """Run a program's click group: Ctrl-C exits 130 quietly (click would print "Aborted!"
    and exit 1, which scripts read as a failed check), Fatal exits 2 with its one line,
    and so does any OS error no command handled itself (a state directory that cannot be
    created, a full disk): one line naming the path and the fix, never a traceback.
    ``permission_hint`` says who may run the program's commands (its service user)."""
    try:
        code = group.main(prog_name=prog_name, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `room-gateway jobs list | head`: the reader is gone
        _quiet_stdout()
        sys.exit(0)
    except OSError as exc:
        Fatal(os_error_line(exc, permission_hint)).show()
        sys.exit(Fatal.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def os_error_line(exc: OSError, permission_hint: str = "") -> str:
    """``PATH: what is wrong (what to do)``, from an OSError's errno and file name."""
    path = exc.filename if exc.filename is not None else ""
    what = (exc.strerror or type(exc).__name__).lower()
    fixes = {
        errno.EACCES: permission_hint or "run it as the user that owns it, or as root",
        errno.EPERM: permission_hint or "run it as the user that owns it, or as root",
        errno.ENOENT: "its directory does not exist: check the path (state_dir, --out, ...)",
        errno.ENOTDIR: "a part of the path is a file, not a directory: check the path",
        errno.ENOSPC: "the disk is full: free space (df -h), then try again",
        errno.EROFS: "the file system is read-only: check the mount (or systemd's ReadWritePaths=)",
        errno.EDQUOT: "the disk quota is exhausted: free space, then try again",
    }
    fix = fixes.get(exc.errno or 0)
    if fix is not None and exc.errno in (errno.EACCES, errno.EPERM) and path:
        fix += f"; who owns what: ls -ld {Path(str(path)).parent}"
    where = f"{path}: " if path else ""
    return f"{where}{what}" + (f": {fix}" if fix else "")


def _quiet_stdout() -> None:
    """After a broken pipe, make the interpreter's final flush of stdout a no-op."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


class SettingsContext(Generic[S]):
    """What a program's commands share: its settings, loaded when a command first needs
    them, so that --help and settings-free commands work even with a broken file, and a
    broken file ends as one line (Fatal) rather than a traceback."""

    def __init__(self, config_path: Path | None, load: Callable[[Path | None], S]) -> None:
        self.config_path = config_path
        self._load = load
        self._settings: S | None = None

    @property
    def settings(self) -> S:
        if self._settings is None:
            from runtime.settings import ConfigError  # pydantic-settings: not for --help

            try:
                self._settings = self._load(self.config_path)
            except ConfigError as exc:
                raise Fatal(str(exc)) from None
        return self._settings


def config_option(env_var: str) -> Callable[[Callable], Callable]:
    """The --config option both programs take."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help=f"TOML settings file (default: ${env_var}, else built-in defaults).",
    )
