"""room-agent: the room device's command line.

Every expected failure (bad config, bad input file, no device) ends as one line on stderr
and exit status 2; a traceback means a bug.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from agent import __version__
from agent.audio import SAMPLE_RATE, AudioInputError
from agent.settings import AgentSettings, load_agent_settings
from runtime.cli import Fatal
from runtime.settings import ConfigError


@dataclass
class CliState:
    config_path: Path | None
    _settings: AgentSettings | None = None

    @property
    def settings(self) -> AgentSettings:
        if self._settings is None:
            try:
                self._settings = load_agent_settings(self.config_path)
            except ConfigError as exc:
                raise Fatal(str(exc)) from None
        return self._settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML settings file (default: $ROOM_AGENT_CONFIG, else built-in defaults).",
)
@click.version_option(__version__, prog_name="room-agent")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None) -> None:
    """The room device: captures speech, seals it and spools it for the gateway."""
    ctx.obj = CliState(config_path)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.pass_obj
def segment(state: CliState, file: Path) -> None:
    """Print the speech segments VAD keeps in FILE (WAV or FLAC), as one JSON object."""
    settings = state.settings
    from agent.filesource import FileSource
    from agent.vad import Segmenter, merge_spans

    try:
        source = FileSource(file)
    except AudioInputError as exc:
        raise Fatal(str(exc)) from None
    segmenter = Segmenter(settings.audio)
    chunks = []
    with source:
        while (block := source.read()) is not None:
            chunks.extend(segmenter.push(block))
        chunks.extend(segmenter.flush())
    spans = merge_spans(chunks)
    result = {
        "file": str(file),
        "sample_rate": SAMPLE_RATE,
        "duration_s": round(source.stats.samples / SAMPLE_RATE, 3),
        "kept_s": round(sum(end - start for start, end in spans), 3),
        "segments": [{"start": round(s, 3), "end": round(e, 3)} for s, e in spans],
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


def main() -> None:
    try:
        cli(prog_name="room-agent")
    except KeyboardInterrupt:
        sys.exit(130)
