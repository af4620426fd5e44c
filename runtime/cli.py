"""The command-line error convention of both programs."""

from __future__ import annotations

import sys
from pathlib import Path

import click


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
