"""The one version of both programs: the installed distribution's, from pyproject.toml.

Read from the package metadata rather than written again in each package, so a release
changes one line and the gateway's API, the agent's User-Agent and heartbeat, and both
``--version`` outputs can never disagree.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "room-audio"


def _installed() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


VERSION = _installed()
