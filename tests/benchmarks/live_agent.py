"""The whole room agent's cost while it records live: CPU %, peak RSS, instructions per
audio second, idle and recording, next to a bare PortAudio capture as the baseline.

A real `room-agent run` (real mosquitto, the stand-in ingest server over HTTP, product
defaults but for the addresses) captures through real PortAudio from the ALSA file plugin,
fed from a FIFO in real time (30 ms periods) with a recorded two-talker session
(tests/support/room_sessions.py). Figures come from /proc/<pid>: CPU = (utime + stime) over
wall time, peak RSS = VmHWM. The baseline is a bare pyaudio capture of the same stream in
its own process (callback into a queue, read and dropped): what any Python agent pays.

Instructions (perf cannot count them on these machines): the same agent under
`valgrind --tool=callgrind --instr-atstart=no`, instrumented only during the measured
phases (callgrind_control -i on, -z, -d), instructions divided by audio seconds fed. Under
valgrind the agent runs ~50x slower, so that phase is short (``--callgrind-s``).

    .venv/bin/python tests/benchmarks/live_agent.py [--seconds 60] [--idle-s 20]
        [--callgrind-s 10] [--no-callgrind] [--no-baseline] [--agent PATH] [--env K=V]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from protocol.messages import StartCommand, StopCommand
from protocol.topics import topic
from tests.agent.device_setup import DEVICE, KEY, PASSWORD, TOKEN, device_env, wait_for_snapshot
from tests.support.alsa import FifoFeeder
from tests.support.ingest_server import IngestServer
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe
from tests.support.processes import Service
from tests.support.room_sessions import make_room_session

PERIOD = 480  # 30 ms at 16 kHz: a typical USB microphone's period
TICK = os.sysconf("SC_CLK_TCK")
ROOM_AGENT = str(Path(sys.executable).parent / "room-agent")
BARE_CAPTURE = textwrap.dedent(
    """
    import queue, sys, pyaudio
    q = queue.Queue(maxsize=400)
    def on_audio(data, frames, info, status):
        q.put_nowait(data)
        return None, pyaudio.paContinue
    pa = pyaudio.PyAudio()
    index = next(i for i in range(pa.get_device_count())
                 if pa.get_device_info_by_index(i)["name"] == "testmic")
    stream = pa.open(rate=16000, channels=1, format=pyaudio.paInt16, input=True,
                     input_device_index=index, frames_per_buffer=int(sys.argv[1]),
                     stream_callback=on_audio)
    print("capturing", flush=True)
    while True:
        q.get()
    """
)


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rss_mb: float

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.wall_s


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = {k: int(v) / 1024 for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB", status, re.M)}
    return found["VmHWM"], found["VmRSS"]


def measure(name: str, pid: int, seconds: float) -> Phase:
    cpu, wall = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - wall
    peak, rss = memory_mb(pid)
    return Phase(name, wall, cpu, peak, rss)


def session_audio(seconds: float) -> np.ndarray:
    pcm, _ = make_room_session(seconds, 20.0, "mixed", "hvac", 4242)
    return pcm


def run_agent(
    work: Path,
    audio: np.ndarray,
    idle_s: float,
    record_s: float,
    valgrind: Path | None,
    extra_env: dict[str, str],
    room_agent: str = ROOM_AGENT,
) -> list[Phase | int]:
    """Idle, then recording: the two phases (or, under callgrind, the instruction counts)."""
    users = {DEVICE: PASSWORD, "gateway": "gateway-secret"}
    fifo = work / "mic.fifo"
    with (
        Broker(work / "broker", users=users) as broker,
        IngestServer(KEY, {DEVICE: TOKEN}) as ingest,
        FifoFeeder(fifo, period_frames=PERIOD) as mic,
    ):
        env = device_env(work, broker.url, ingest.url, fifo)
        for key in ("HEARTBEAT_S", "RECONNECT_MIN_S", "RECONNECT_MAX_S"):
            env.pop(f"ROOM_AGENT_MQTT__{key}")  # product defaults, not the tests' fast ones
        for key in ("BACKOFF_BASE_S", "BACKOFF_MAX_S"):
            env.pop(f"ROOM_AGENT_LINK__{key}")
        env.update(extra_env)
        argv = [room_agent, "run"]
        if valgrind is not None:
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={valgrind}.%p",
                *argv,
            ]
        agent = Service(argv, work / "agent.log", env=env).start()
        try:
            startup = 600 if valgrind else 30
            wait_for_snapshot(work, lambda s: s.mqtt_connected, timeout=startup)
            time.sleep(2.0 if valgrind is None else 10.0)  # let start-up settle
            results: list[Phase | int] = []
            results.append(phase(agent.pid, "idle", idle_s, valgrind))
            state, cmd = topic(DEVICE, "state"), topic(DEVICE, "cmd")
            with Probe(broker) as probe:
                probe.publish(cmd, StartCommand(command_id="go", session_id="bench-1"))
                probe.wait_for(probe.on(state, recorder="recording"), timeout=startup)
                mic.play(audio)
                results.append(phase(agent.pid, "recording", record_s, valgrind))
                probe.publish(cmd, StopCommand(command_id="end", session_id="bench-1"))
                ingest.wait_until(lambda: ingest.manifest("bench-1") is not None, timeout=startup)
            chunks = len(ingest.chunks("bench-1"))
            if not chunks:
                raise SystemExit("the session reached the gateway without chunks")
            return results
        finally:
            agent.stop(timeout=60)


def phase(pid: int, name: str, seconds: float, valgrind: Path | None) -> Phase | int:
    if valgrind is None:
        return measure(name, pid, seconds)
    control = ["callgrind_control"]

    def call(*args: str) -> None:
        subprocess.run([*control, *args, str(pid)], capture_output=True, check=True)

    call("-i", "on")
    call("-z")
    time.sleep(seconds)
    call("-d", name)
    call("-i", "off")
    dumps = sorted(valgrind.parent.glob(f"{valgrind.name}.{pid}.*"), key=os.path.getmtime)
    match = re.search(r"^totals:\s*(\d+)", dumps[-1].read_text(), re.M) if dumps else None
    if match is None:
        raise SystemExit(f"no callgrind dump for {name}")
    return int(match.group(1))


def run_baseline(work: Path, audio: np.ndarray, seconds: float) -> Phase:
    fifo = work / "bare.fifo"
    with FifoFeeder(fifo, period_frames=PERIOD) as mic:
        env = device_env(work, mic=fifo)
        bare = Service(
            [sys.executable, "-c", BARE_CAPTURE, str(PERIOD)], work / "bare.log", env=env
        ).start()
        try:
            deadline = time.monotonic() + 30
            while "capturing" not in bare.log():
                if time.monotonic() > deadline:
                    raise SystemExit(f"bare capture did not start:\n{bare.log()}")
                time.sleep(0.1)
            time.sleep(2.0)
            mic.play(audio)
            return measure("bare capture", bare.pid, seconds)
        finally:
            bare.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="recording phase, s")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle phase, s")
    parser.add_argument("--callgrind-s", type=float, default=10.0, help="each callgrind phase")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--agent",
        default=ROOM_AGENT,
        help="the room-agent to run, e.g. one installed with only the [agent] extra (as on a"
        " device: no test or dev packages that httpx would import)",
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the agent (a setting to try)"
    )
    args = parser.parse_args()
    audio = session_audio(args.seconds + 30)
    with tempfile.TemporaryDirectory(prefix="live-agent-") as tmp:
        work = Path(tmp)
        (work / "agent").mkdir()
        extra = dict(item.split("=", 1) for item in args.env)
        phases = run_agent(
            work / "agent", audio, args.idle_s, args.seconds, None, extra, args.agent
        )
        baseline = None
        if not args.no_baseline:
            (work / "bare").mkdir()
            baseline = run_baseline(work / "bare", audio, args.seconds)
        instructions: list[Phase | int] = []
        if not args.no_callgrind:
            (work / "cg").mkdir()
            instructions = run_agent(
                work / "cg",
                audio,
                args.callgrind_s,
                args.callgrind_s,
                work / "cg" / "out",
                extra,
                args.agent,
            )
    print(
        f"live agent, 16 kHz mono via PortAudio (ALSA file plugin, FIFO at real time); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'process':<22} {'wall s':>7} {'CPU %':>7} {'peak RSS MB':>12} {'RSS MB':>7}")
    for item in [*phases, *([baseline] if baseline else [])]:
        assert isinstance(item, Phase)
        print(
            f"{item.name:<22} {item.wall_s:>7.1f} {item.cpu_percent:>7.3f} "
            f"{item.peak_rss_mb:>12.1f} {item.rss_mb:>7.1f}"
        )
    if baseline is not None:
        recording = phases[1]
        assert isinstance(recording, Phase)
        print(f"recording / bare capture CPU: {recording.cpu_s / max(baseline.cpu_s, 1e-9):.1f}x")
    if instructions:
        idle_ir, rec_ir = (int(count) for count in instructions if isinstance(count, int))
        print(
            f"instructions (callgrind, {args.callgrind_s:g} s each): idle "
            f"{idle_ir / args.callgrind_s / 1e6:.1f} M per second, recording "
            f"{rec_ir / args.callgrind_s / 1e6:.1f} M per audio second"
        )


if __name__ == "__main__":
    main()
