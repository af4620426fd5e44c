"""The whole room agent's cost while it records live: CPU %, peak RSS, instructions per
audio second, idle and recording, before and after a change, next to a bare PortAudio
capture as the baseline, all in the same run.

A real `room-agent run` (real mosquitto, the stand-in ingest server over HTTP, product
defaults but for the addresses) captures through real PortAudio from the ALSA file plugin,
fed from a FIFO in real time, in periods of the agent's default capture block, with a
recorded two-talker session (tests/support/room_sessions.py). Figures come from
/proc/<pid>: CPU = (utime + stime) over wall time, peak RSS = VmHWM. The baseline is a bare
pyaudio capture of the same stream in its own process (callback into a queue, read and
dropped): what any Python agent pays, at each capture block the agents use. The memory
baseline is an interpreter that only imports the third-party modules the agent's run path
imports: what these libraries hold before our code adds anything.

"Before" is another source tree of the project (``--before DIR``, e.g. main's:
``git archive main | tar -x -C DIR``), run by the same interpreter with DIR first on
PYTHONPATH; "after" is the agent installed (``--agent``).

Instructions (perf cannot count them on these machines): the same agent under
`valgrind --tool=callgrind --instr-atstart=no`, instrumented only during the measured
phases (callgrind_control -i on, -z, -d), instructions divided by audio seconds fed. Under
valgrind the agent runs ~50x slower, so that phase is short (``--callgrind-s``).

    .venv/bin/python tests/benchmarks/live_agent.py [--seconds 60] [--idle-s 20]
        [--callgrind-s 10] [--no-callgrind] [--no-baseline] [--threads] [--agent PATH]
        [--env K=V] [--before DIR]
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
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from protocol.messages import StartCommand, StopCommand
from protocol.topics import topic
from tests.agent.device_setup import DEVICE, KEY, PASSWORD, TOKEN, device_env, wait_for_snapshot
from tests.benchmarks import thread_use
from tests.benchmarks.thread_use import ThreadUse
from tests.support.alsa import FifoFeeder
from tests.support.ingest_server import IngestServer
from tests.support.mosquitto import Broker
from tests.support.mqtt_probe import Probe
from tests.support.processes import Service
from tests.support.room_sessions import make_room_session

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


# The third-party modules `room-agent run` imports (every one, not only the top-level
# packages: cryptography's OpenSSL bindings load with its primitives), imported in a fresh
# interpreter with nothing of ours: resident memory that no agent built on these
# libraries goes below, before any of them is used.
DEPENDENCY_FLOOR = textwrap.dedent(
    """
    import json, subprocess, sys, sysconfig
    run_path = (
        "import json, sys, sysconfig; import agent.daemon, agent.pipeline.capture, agent.cli; "
        "lib = sysconfig.get_paths()['purelib']; "
        "print(json.dumps([n for n, m in list(sys.modules.items()) "
        "if (getattr(m, '__file__', None) or '').startswith(lib) "
        "and n.split('.')[0] not in ('agent', 'protocol', 'runtime') "
        "and not n.startswith(('__editable__', '_distutils_hack'))]))"
    )
    names = json.loads(subprocess.run([sys.executable, "-c", run_path], capture_output=True,
                                      text=True, check=True).stdout)
    for name in names:
        __import__(name)
    status = open("/proc/self/status").read()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    packages = sorted({name.split(".")[0] for name in names if not name.startswith("_")})
    print(json.dumps({"rss_mb": rss, "packages": packages}))
    """
)


def dependency_floor(python: str, env: dict[str, str], cwd: Path | None) -> tuple[float, str]:
    """(RSS in MB, the packages) of an interpreter holding only the agent's libraries."""
    import json

    done = subprocess.run(
        [python, "-c", DEPENDENCY_FLOOR], env={**os.environ, **env}, cwd=cwd,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = json.loads(done.stdout)
    return float(found["rss_mb"]), " ".join(found["packages"])


@dataclass
class Agent:
    """One agent under test: how to start it, and the capture block it reads (frames)."""

    name: str
    argv: list[str]
    period: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


def installed_agent(room_agent: str, extra_env: dict[str, str]) -> Agent:
    python = str(Path(room_agent).parent / "python")
    return Agent("after", [room_agent, "run"], agent_period(python, {}, None), dict(extra_env))


def source_agent(tree: Path, room_agent: str, extra_env: dict[str, str]) -> Agent:
    """The project in ``tree`` (another revision), run by the installed agent's interpreter."""
    python = str(Path(room_agent).parent / "python")
    env = {**extra_env, "PYTHONPATH": str(tree)}
    argv = [python, "-c", "import sys; from agent.cli import main; sys.exit(main())", "run"]
    period = agent_period(python, env, tree)
    return Agent("before", argv, period, env, tree)


def agent_period(python: str, env: dict[str, str], cwd: Path | None) -> int:
    """The capture block, in frames at 16 kHz, that this agent reads (its default)."""
    code = (
        "import agent.settings as s, sys; "
        "print(s.__file__, file=sys.stderr); print(s.AudioSettings().block_ms * 16)"
    )
    done = subprocess.run(
        [python, "-c", code], env={**os.environ, **env}, cwd=cwd, capture_output=True,
        text=True, check=True,
    )  # fmt: skip
    if cwd is not None and not done.stderr.strip().startswith(str(cwd)):
        raise SystemExit(f"--before: the agent came from {done.stderr.strip()}, not {cwd}")
    return int(done.stdout)


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    rss_mb: float
    threads: list[ThreadUse] = field(default_factory=list)

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


def measure(name: str, pid: int, seconds: float, by_thread: bool = False) -> Phase:
    threads = thread_use.snapshot(pid) if by_thread else {}
    cpu, wall = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    cpu, wall = cpu_seconds(pid) - cpu, time.monotonic() - wall
    used = thread_use.use_between(pid, threads, thread_use.snapshot(pid)) if by_thread else []
    peak, rss = memory_mb(pid)
    return Phase(name, wall, cpu, peak, rss, used)


def session_audio(seconds: float) -> np.ndarray:
    pcm, _ = make_room_session(seconds, 20.0, "mixed", "hvac", 4242)
    return pcm


def run_agent(
    work: Path,
    audio: np.ndarray,
    idle_s: float,
    record_s: float,
    valgrind: Path | None,
    under_test: Agent,
    by_thread: bool = False,
) -> list[Phase | int]:
    """Idle, then recording: the two phases (or, under callgrind, the instruction counts)."""
    users = {DEVICE: PASSWORD, "gateway": "gateway-secret"}
    fifo = work / "mic.fifo"
    with (
        Broker(work / "broker", users=users) as broker,
        IngestServer(KEY, {DEVICE: TOKEN}) as ingest,
        FifoFeeder(fifo, period_frames=under_test.period) as mic,
    ):
        env = device_env(work, broker.url, ingest.url, fifo)
        for key in ("HEARTBEAT_S", "RECONNECT_MIN_S", "RECONNECT_MAX_S"):
            env.pop(f"ROOM_AGENT_MQTT__{key}")  # product defaults, not the tests' fast ones
        for key in ("BACKOFF_BASE_S", "BACKOFF_MAX_S"):
            env.pop(f"ROOM_AGENT_LINK__{key}")
        env.update(under_test.env)
        argv = list(under_test.argv)
        if valgrind is not None:
            argv = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={valgrind}.%p",
                *argv,
            ]
        agent = Service(argv, work / "agent.log", env=env, cwd=under_test.cwd).start()
        try:
            startup = 600 if valgrind else 30
            wait_for_snapshot(work, lambda s: s.mqtt_connected, timeout=startup)
            time.sleep(2.0 if valgrind is None else 10.0)  # let start-up settle
            results: list[Phase | int] = []
            idle = f"{under_test.name}: idle"
            results.append(phase(agent.pid, idle, idle_s, valgrind, by_thread))
            state, cmd = topic(DEVICE, "state"), topic(DEVICE, "cmd")
            with Probe(broker) as probe:
                probe.publish(cmd, StartCommand(command_id="go", session_id="bench-1"))
                probe.wait_for(probe.on(state, recorder="recording"), timeout=startup)
                mic.play(audio)
                name = f"{under_test.name}: recording"
                results.append(phase(agent.pid, name, record_s, valgrind, by_thread))
                probe.publish(cmd, StopCommand(command_id="end", session_id="bench-1"))
                ingest.wait_until(lambda: ingest.manifest("bench-1") is not None, timeout=startup)
            chunks = len(ingest.chunks("bench-1"))
            if not chunks and valgrind is None:
                raise SystemExit(
                    f"{under_test.name}: the session reached the gateway without chunks"
                )
            if not chunks:  # ~50x slower under valgrind: a phase may hold no whole utterance
                print(f"{under_test.name} (callgrind): no chunk in {record_s:g} s", file=sys.stderr)
            return results
        finally:
            agent.stop(timeout=60)


def phase(
    pid: int, name: str, seconds: float, valgrind: Path | None, by_thread: bool
) -> Phase | int:
    if valgrind is None:
        return measure(name, pid, seconds, by_thread)
    control = ["callgrind_control"]

    def call(*args: str) -> None:
        subprocess.run([*control, *args, str(pid)], capture_output=True, check=True)

    call("-i", "on")
    call("-z")
    time.sleep(seconds)
    call("-d", name.replace(" ", "").replace(":", "-"))
    call("-i", "off")
    dumps = sorted(valgrind.parent.glob(f"{valgrind.name}.{pid}.*"), key=os.path.getmtime)
    match = re.search(r"^totals:\s*(\d+)", dumps[-1].read_text(), re.M) if dumps else None
    if match is None:
        raise SystemExit(f"no callgrind dump for {name}")
    return int(match.group(1))


def run_baseline(work: Path, audio: np.ndarray, seconds: float, period: int) -> Phase:
    fifo = work / "bare.fifo"
    with FifoFeeder(fifo, period_frames=period) as mic:
        env = device_env(work, mic=fifo)
        bare = Service(
            [sys.executable, "-c", BARE_CAPTURE, str(period)], work / "bare.log", env=env
        ).start()
        try:
            deadline = time.monotonic() + 30
            while "capturing" not in bare.log():
                if time.monotonic() > deadline:
                    raise SystemExit(f"bare capture did not start:\n{bare.log()}")
                time.sleep(0.1)
            time.sleep(2.0)
            mic.play(audio)
            return measure(f"bare capture {period // 16} ms", bare.pid, seconds)
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
        "--threads",
        action="store_true",
        help="also print each phase's CPU and wake-ups per thread (names need py-spy)",
    )
    parser.add_argument(
        "--agent",
        default=ROOM_AGENT,
        help="the room-agent to run, e.g. one installed with only the [agent] extra (as on a"
        " device: no test or dev packages that httpx would import)",
    )
    parser.add_argument(
        "--before", type=Path, help="a source tree of the project to compare with (e.g. main)"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the agent (a setting to try)"
    )
    args = parser.parse_args()
    audio = session_audio(args.seconds + 30)
    extra = dict(item.split("=", 1) for item in args.env)
    agents = [installed_agent(args.agent, extra)]
    if args.before is not None:
        agents.insert(0, source_agent(args.before.resolve(), args.agent, extra))
    phases: list[Phase] = []
    instructions: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="live-agent-") as tmp:
        work = Path(tmp)
        for agent in agents:
            (work / agent.name).mkdir()
            measured = run_agent(
                work / agent.name, audio, args.idle_s, args.seconds, None, agent, args.threads
            )
            phases += [item for item in measured if isinstance(item, Phase)]
        if not args.no_baseline:
            for period in sorted({agent.period for agent in agents}):
                (work / f"bare-{period}").mkdir()
                phases.append(run_baseline(work / f"bare-{period}", audio, args.seconds, period))
        if not args.no_callgrind:
            for agent in agents:
                cg = work / f"cg-{agent.name}"
                cg.mkdir()
                counts = run_agent(cg, audio, args.callgrind_s, args.callgrind_s, cg / "out", agent)
                idle_ir, rec_ir = (int(count) for count in counts if isinstance(count, int))
                instructions[agent.name] = (idle_ir, rec_ir)
    print(
        f"live agent, 16 kHz mono via PortAudio (ALSA file plugin, FIFO at real time); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for agent in agents:
        print(f"  {agent.name}: capture block {agent.period // 16} ms: {' '.join(agent.argv)}")
    for agent in agents:
        python = str(Path(args.agent).parent / "python")
        floor_mb, packages = dependency_floor(python, agent.env, agent.cwd)
        print(f"  {agent.name}: its libraries alone, imported: {floor_mb:.1f} MB RSS ({packages})")
    print(f"{'process':<22} {'wall s':>7} {'CPU %':>7} {'peak RSS MB':>12} {'RSS MB':>7}")
    for item in phases:
        print(
            f"{item.name:<22} {item.wall_s:>7.1f} {item.cpu_percent:>7.3f} "
            f"{item.peak_rss_mb:>12.1f} {item.rss_mb:>7.1f}"
        )
    for item in phases:
        if item.threads:
            print(f"{item.name}, by thread (CPU ms, wake-ups, over {item.wall_s:.0f} s):")
            for used in item.threads:
                if used.cpu_ms >= 0.05 or used.wakeups:
                    print(f"  {used.name:<34} {used.cpu_ms:>9.1f} {used.wakeups:>8}")
    recording = {p.name.split(":")[0]: p for p in phases if p.name.endswith(": recording")}
    bare = {p.name: p for p in phases if p.name.startswith("bare capture")}
    for agent in agents:
        base = bare.get(f"bare capture {agent.period // 16} ms")
        if base is not None:
            ratio = recording[agent.name].cpu_s / max(base.cpu_s, 1e-9)
            print(f"{agent.name}: recording / bare capture at its block CPU: {ratio:.1f}x")
    if "before" in recording:
        ratio = recording["after"].cpu_s / max(recording["before"].cpu_s, 1e-9)
        print(f"after / before, recording CPU: {ratio:.2f}x")
    for name, (idle_ir, rec_ir) in instructions.items():
        print(
            f"{name}: instructions (callgrind, {args.callgrind_s:g} s each): idle "
            f"{idle_ir / args.callgrind_s / 1e6:.1f} M per second, recording "
            f"{rec_ir / args.callgrind_s / 1e6:.1f} M per audio second"
        )


if __name__ == "__main__":
    main()
