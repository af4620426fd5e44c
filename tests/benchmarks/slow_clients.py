"""How many idle connections the gateway port tolerates while /healthz stays under 100 ms
(issue 10): a real `room-gateway serve` under a file-descriptor limit (``--fd-limits``;
1024 is a shell's, 8192 the systemd unit's), idle connections that each sent half a
request header (a slowloris) added step by step, and /healthz's median latency over
fresh connections measured at each step. Baseline: the same measurement with no idle
connection, in the same run; each figure is also given as a ratio to it.

    .venv/bin/python tests/benchmarks/slow_clients.py [--steps 0 1000 2000 4000 8000]
                                                      [--fd-limits 1024 8192]
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.gateway.test_slow_clients import half_open, healthz_latency, limited_gateway


def run(fd_limit: int, steps: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        # A long header deadline: the idle connections are all still waiting when measured.
        gateway = limited_gateway(
            Path(directory), fd_limit, fd_limit, ROOM_GATEWAY_HTTP__HEADER_TIMEOUT_S="120"
        )
        idle: list[socket.socket] = []
        try:
            baseline = healthz_latency(gateway.port, probes=9)
            print(f"fd limit {fd_limit}: baseline (0 idle) {baseline * 1000:.1f} ms")
            for target in steps:
                started = time.monotonic()
                while len(idle) < target:
                    sock = half_open(gateway.port)
                    if sock is not None:
                        idle.append(sock)
                latency = healthz_latency(gateway.port, probes=9)
                print(
                    f"  {target:6d} idle connections opened in {time.monotonic() - started:5.1f} s:"
                    f" /healthz {latency * 1000:7.1f} ms ({latency / baseline:5.1f} x baseline)"
                )
        finally:
            for sock in idle:
                sock.close()
            gateway.stop()
        lines = gateway.log().splitlines()
        tracebacks = sum("Traceback" in line for line in lines)
        print(f"  log: {len(lines)} lines, {tracebacks} tracebacks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    parser.add_argument("--fd-limits", type=int, nargs="+", default=[1024, 8192])
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this side holds them all
    for fd_limit in args.fd_limits:
        run(fd_limit, args.steps)


if __name__ == "__main__":
    main()
