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
