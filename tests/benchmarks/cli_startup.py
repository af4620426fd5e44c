"""CLI start-up: how long a technician waits for `room-agent --help`, `status`, `doctor`
and `room-gateway device list` before anything is done (a Pi is 5-10x slower than this).

Each command runs N times in a fresh process; the median and the best are printed, next
to a bare `python -c pass` (the interpreter's own start-up) and their ratio. ``--tree DIR``
measures another checkout with this venv (its code first on sys.path), e.g. main's, for a
before/after table:

    .venv/bin/python tests/benchmarks/cli_startup.py [--runs 9] [--tree /tmp/main-checkout]

Settings: a device with no broker and no gateway (status and doctor then measure their own
work, not network timeouts), and a gateway with a fresh SQLite store, all in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENT = "from agent.cli import main; main()"
GATEWAY = "from gateway.cli import main; main()"


def measure(argv: list[str], env: dict[str, str], runs: int, cwd: str) -> tuple[float, float]:
    """``cwd`` outside any checkout: `python -c` puts the current directory first."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ROOM_AGENT_", "ROOM_GATEWAY_"))
        }
        env.update(
            PYTHONPATH=str(args.tree),
            ROOM_AGENT_STATE_DIR=f"{tmp}/agent",
            ROOM_GATEWAY_STATE_DIR=f"{tmp}/gateway",
        )
        py = [sys.executable, "-c"]
        subprocess.run(
            [*py, GATEWAY, "room", "add", "room-1"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        commands = {
            "python -c pass": [*py, "pass"],
            "room-agent --help": [*py, AGENT, "--help"],
            "room-agent status": [*py, AGENT, "status"],
            "room-agent doctor --no-check": [*py, AGENT, "doctor", "--no-check"],
            "room-gateway --help": [*py, GATEWAY, "--help"],
            "room-gateway device list": [*py, GATEWAY, "device", "list"],
        }
        base = None
        print(f"tree {args.tree}, {args.runs} runs each; load {os.getloadavg()[0]:.2f}")
        print(f"{'command':<30} {'median':>8} {'best':>8} {'x python':>9}")
        for name, argv in commands.items():
            median, best = measure(argv, env, args.runs, tmp)
            base = base or median
            print(f"{name:<30} {median:>7.3f}s {best:>7.3f}s {median / base:>8.1f}x")


if __name__ == "__main__":
    main()
