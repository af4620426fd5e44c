"""The lock files the service is installed from (scripts/install.sh) agree with pyproject.

`make lock` writes them with pip-compile; this fails when pyproject changes and they were
not written again: every requirement of the extra is pinned, at a version it allows, and
every pin carries hashes (pip installs them with --require-hashes).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _pins(lock: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize("extra", ["agent", "gateway"])
def test_the_lock_pins_every_requirement_within_pyproject(extra: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = ROOT / "requirements" / f"{extra}.lock"
    assert f"--extra={extra}" in lock.read_text(), "written for another extra"
    pins = _pins(lock)
    assert pins, f"{lock}: no pins"
    for text in [*project["dependencies"], *project["optional-dependencies"][extra]]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock.name}: {name} missing: run `make lock`"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock.name}: {name}=={version} is outside {requirement.specifier}: `make lock`"
        )
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert unhashed == [], "pins without hashes"


def test_install_uses_the_lock_with_hashes() -> None:
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert "--require-hashes" in script and "requirements/$extra.lock" in script
