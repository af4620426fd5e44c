"""One version: pyproject.toml's, as both programs and the gateway's API report it."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from agent.cli import cli as agent_cli
from gateway.cli import cli as gateway_cli
from runtime.version import VERSION

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_pyprojects_everywhere() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert declared == VERSION
    for program, group in (("room-agent", agent_cli), ("room-gateway", gateway_cli)):
        result = CliRunner().invoke(group, ["--version"], prog_name=program)
        assert result.output == f"{program}, version {declared}\n"
