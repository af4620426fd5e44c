"""`room-gateway demo` as a user runs it, headless: two demos at once (free ports, separate
state), each exits 0 with every step, the note and the timeline; Ctrl-C mid-session stops
everything promptly with status 130. Afterwards no process of either demo is left: none of
the pids it printed, and none whose working directory is in its state directory (every
child of the demo runs there).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest

from devtools.demo.partner import NAMES
from devtools.demo.progress import Progress
from devtools.demo.report import timeline_lines
from devtools.demo.speech import speech_cache_dir

ROOM_GATEWAY = str(Path(sys.executable).with_name("room-gateway"))
STEPS = (
    "speech",
    "provisioned",
    "processes",
    "room online",
    "clinician and client",
    "recording",
    "chunks uploaded",
    "stopped",
    "assembled",
    "uploaded to Blueprint",
    "transcript ready",
    "note ready",
    "device notified",
    "privacy",
)
STATE_LINE = re.compile(r"^room-gateway demo: state in (\S+) ")


class DemoRun:
    """`room-gateway demo --no-tty` with its own TMPDIR; its output read line by line."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_")}
        # The rendered speech is shared with the other tests; the state dir is not.
        env.update(TMPDIR=str(tmp), ROOM_AUDIO_SPEECH_CACHE=str(speech_cache_dir()))
        self.proc = subprocess.Popen(
            [ROOM_GATEWAY, "demo", "--no-tty"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._read_all = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                break
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output}")

    def wait(self, timeout: float) -> int:
        """Its exit status, once its output is read to the end."""
        code = self.proc.wait(timeout)
        assert self._read_all.wait(5), "output still open after exit: a child holds it"
        return code

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def state_dir(self) -> Path:
        match = next(m for line in self.lines if (m := STATE_LINE.match(line)))
        return Path(match.group(1))

    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in re.findall(r"(\w+) pid=(\d+)", self.output)}

    def ports(self) -> set[int]:
        return {int(port) for port in re.findall(r"port=(\d+)", self.output)}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)
        self._read_all.set()


def processes_in(directory: Path) -> list[str]:
    """Processes whose working directory is ``directory`` or below (or was, if deleted)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(directory)):
            found.append(f"{proc.name} {(proc / 'cmdline').read_bytes()[:120]!r}")
    return found


def assert_nothing_left(run: DemoRun) -> None:
    pids = run.pids()
    assert set(pids) == {"mosquitto", "simulator", "gateway", "agent"}, run.output
    alive = [name for name, pid in pids.items() if Path(f"/proc/{pid}").exists()]
    assert not alive, f"still running: {alive}"
    assert not processes_in(run.state_dir), processes_in(run.state_dir)
    assert not run.state_dir.exists(), "the state directory was not removed"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_demos_at_once_each_end_to_end(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    runs = [DemoRun(tmp_path / name) for name in ("one", "two")]
    codes = [run.wait(timeout=200) for run in runs]

    for run, code in zip(runs, codes, strict=True):
        assert code == 0, run.output
        for step in STEPS:
            line = re.compile(rf"^\[\s*\d+\.\d s\] {re.escape(step)}\s", re.MULTILINE)
            assert line.search(run.output), f"no line for step {step!r}:\n{run.output}"
        assert re.search(r"^\[.*\]   chunk 2 at the gateway", run.output, re.MULTILINE)
        assert "Progress note (soap, 4 sections; from progress_note_generated):" in run.output
        for title in ("Subjective", "Objective", "Assessment", "Plan"):
            assert f"  {title} [{title.lower()}]" in run.output
        assert re.search(r"^Timeline of session ses_\w+ ", run.output, re.MULTILINE)
        for step in ("start_confirmed", "audio_ready", "audio_uploaded", "notes_ready"):
            assert re.search(rf"^\s+\d+\.\d{{3}} s  \(\+\s*\d+\.\d{{3}} s\)  {step}", run.output,
                             re.MULTILINE), step  # fmt: skip
        assert re.search(r"^  stop -> note ready\s+\d+\.\d{3} s$", run.output, re.MULTILINE)
        assert "no clinician or client name in any" in run.output
        for name in NAMES:
            assert name not in run.output
        assert_nothing_left(run)
    assert not runs[0].ports() & runs[1].ports(), "two demos on the same ports"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_mid_session_stops_everything(tmp_path: Path) -> None:
    run = DemoRun(tmp_path)
    run.wait_for_line(r"^\[.*\] recording\s", timeout=60)
    time.sleep(2)  # the agent is capturing, chunks are on their way
    run.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()

    assert run.wait(timeout=30) == 130, run.output
    assert time.monotonic() - sent < 20, "Ctrl-C took too long"
    assert "interrupted (SIGINT) during step 'chunks uploaded'" in run.output
    assert re.search(r"^stopped: agent \(pid \d+\), gateway", run.output, re.MULTILINE)
    assert_nothing_left(run)


def test_progress_on_a_terminal_redraws_one_line_in_place() -> None:
    out = StringIO()
    progress = Progress(out, tty=True)
    progress.begin("recording", "waiting")
    progress.update("3.0/37.2 s played", 0.5)
    progress.note("chunk 1 at the gateway")
    progress.done("confirmed")
    progress.close()
    text = out.getvalue()
    assert "\r\x1b[K" in text and "██████████░░░░░░░░░░ 3.0/37.2 s played" in text
    finished = text.split("\r\x1b[K")[-1]
    assert re.fullmatch(r"  \x1b\[32m✓\x1b\[0m recording\s+confirmed  .*\n", finished)
    assert "chunk 1 at the gateway" in text


def test_progress_elsewhere_prints_plain_lines_only() -> None:
    out = StringIO()
    progress = Progress(out, tty=False)
    progress.begin("assembled", "waiting")
    progress.update("ignored off a terminal")
    progress.done("7 chunks")
    progress.close()
    assert re.fullmatch(r"\[\s*\d+\.\d s\] assembled\s+7 chunks \(\d+\.\d s\)\n", out.getvalue())


def test_timeline_durations_use_the_notification_that_matters() -> None:
    def at(seconds: float) -> str:
        return f"2026-01-01T00:00:{seconds:06.3f}+00:00"

    session = {
        "session_id": "ses_x",
        "timeline": [
            {"at": at(0), "step": "created", "detail": None},
            {"at": at(1), "step": "stopped", "detail": None},
            {"at": at(2), "step": "device_notified", "detail": "session_uploaded"},
            {"at": at(3), "step": "notes_ready", "detail": None},
            {"at": at(3.5), "step": "device_notified", "detail": "notes_ready"},
        ],
    }
    lines = timeline_lines(session)
    assert "     3.500 s  (+ 0.500 s)  device_notified  notes_ready" in lines
    assert any(re.fullmatch(r"  note ready -> device notified\s+0\.500 s", ln) for ln in lines)
    assert any(re.fullmatch(r"  stop -> note ready\s+2\.000 s", ln) for ln in lines)
