"""The command-line error convention of both programs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import click

from runtime.settings import ConfigError

S = TypeVar("S")


class Fatal(click.ClickException):
    """An error a person can act on: one line on stderr, exit status 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"{Path(sys.argv[0]).name}: {self.format_message()}", err=True)


def run_program(group: click.Group, prog_name: str) -> None:
    """Run a program's click group: Ctrl-C exits 130 quietly (click would print "Aborted!"
    and exit 1, which scripts read as a failed check), Fatal exits 2 with its one line."""
    try:
        code = group.main(prog_name=prog_name, standalone_mode=False)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


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
