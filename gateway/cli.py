"""room-gateway: the partner-run service's command line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from gateway import __version__
from runtime.cli import Fatal


@dataclass
class CliState:
    config_path: Path | None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $ROOM_GATEWAY_CONFIG, else built-in defaults).",
)
@click.version_option(__version__, prog_name="room-gateway")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """The gateway: holds the Blueprint secrets, ingests room audio, relays notes."""
    ctx.obj = CliState(config_path)


@cli.command()
@click.pass_obj
def serve(state: CliState) -> None:
    """Run the gateway service (HTTP API, webhook receiver, job worker)."""
    raise Fatal("serve: not implemented yet")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
def simulator(host: str, port: int) -> None:
    """Run the Blueprint API simulator (the embedded default for demo and tests)."""
    raise Fatal("simulator: not implemented yet")


def main() -> None:
    try:
        cli(prog_name="room-gateway")
    except KeyboardInterrupt:
        sys.exit(130)
