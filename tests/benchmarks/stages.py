"""The gateway's stage counters (CPU and wall seconds by stage) as a benchmark prints them."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r'^(\w+?)_(count|cpu_seconds|seconds)_total\{stage="([^"]+)"\} (\S+)$')


def parse_stages(text: str, prefix: str) -> dict[str, tuple[float, float, float]]:
    """{stage: (count, cpu_s, wall_s)} from Prometheus text for the ``prefix`` counters."""
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != prefix:
            continue
        slot = ("count", "cpu_seconds", "seconds").index(match.group(2))
        found.setdefault(match.group(3), [0.0, 0.0, 0.0])[slot] = float(match.group(4))
    return {stage: (v[0], v[1], v[2]) for stage, v in found.items()}


def stage_report(stages: dict[str, tuple[float, float, float]], indent: str = "") -> str:
    """One line per stage: CPU-ms and wall-ms per call, and what bounds it."""
    lines = []
    for stage, (count, cpu_s, wall_s) in stages.items():
        if count <= 0:
            continue
        cpu_ms, wall_ms = cpu_s * 1000 / count, wall_s * 1000 / count
        lines.append(f"{indent}{stage:<22} CPU {cpu_ms:6.2f} ms, wall {wall_ms:6.2f} ms"
                     f" per call ({count:.0f}): {bound(cpu_ms, wall_ms)}")  # fmt: skip
    return "\n".join(lines)


def bound(cpu_ms: float, wall_ms: float) -> str:
    """CPU-bound when the thread ran for most of the stage; else it waited (I/O, a lock,
    the GIL, the database, fsync)."""
    if wall_ms <= 0:
        return "-"
    return "CPU-bound" if cpu_ms >= 0.6 * wall_ms else f"waits ({cpu_ms / wall_ms:.0%} CPU)"
