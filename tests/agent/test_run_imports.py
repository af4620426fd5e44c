"""What `room-agent run` holds in memory: nothing it never uses (issue 8, peak RSS).

In a fresh interpreter, as the service starts: a module imported by the run path stays
resident for the life of the process.
"""

from __future__ import annotations

import json
import subprocess
import sys

RUN_PATH = "import agent.daemon, agent.pipeline.capture"


def imported_after(code: str, candidates: tuple[str, ...]) -> list[str]:
    found = f"[m for m in {candidates!r} if sys.modules.get(m) is not None]"
    probe = f"import json, sys; {code}; print(json.dumps({found}))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(done.stdout))


def test_the_run_path_does_not_import_httpx_command_line() -> None:
    """httpx's CLI (rich, pygments) would cost ~4 MB whenever those packages are installed."""
    assert imported_after(RUN_PATH, ("httpx._main", "rich", "pygments")) == []


def test_the_resampler_is_imported_only_for_a_device_without_16_khz() -> None:
    assert imported_after(RUN_PATH, ("soxr",)) == []
    code = "from agent.pipeline.resample import Resampler; Resampler(48000, 1)"
    assert imported_after(code, ("soxr",)) == ["soxr"]


def test_httpx_still_works_without_its_command_line() -> None:
    code = "import agent, httpx; httpx.Client().close()"
    assert imported_after(code, ("httpx", "httpx._main")) == ["httpx"]
