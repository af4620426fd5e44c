"""The whole system on one machine, set up as a technician would: a gateway config file,
then the gateway's own commands (``keygen``, ``broker-config``, ``device add``,
``partner-token create``), then mosquitto from the files broker-config wrote, the Blueprint
simulator, ``room-gateway serve`` and ``room-agent run`` with the agent.toml and credential
files ``device add`` wrote. Nothing is provisioned behind the commands' backs.

Everything lives in one state directory, on free loopback ports picked at start, so two
demos run side by side without noticing each other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devtools.demo.microphone import PCM_NAME, write_asound_conf
from devtools.demo.processes import HOST, Child, clean_env, free_ports

ROOM = "room-demo"
ROOM_LABEL = "Demo room"
COMMAND_TIMEOUT_S = 60.0


class StackError(Exception):
    """A set-up command failed; the message holds its last stderr lines (ids only)."""


@dataclass(frozen=True)
class Ports:
    broker: int
    simulator: int
    gateway: int

    @classmethod
    def pick(cls) -> Ports:
        broker, simulator, gateway = free_ports(3)
        return cls(broker=broker, simulator=simulator, gateway=gateway)


@dataclass(frozen=True)
class Layout:
    """Where each part keeps its files inside the demo's state directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def gateway_state(self) -> Path:
        return self.root / "gateway"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def device_dir(self) -> Path:
        return self.root / "device"

    @property
    def agent_state(self) -> Path:
        return self.root / "agent"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def fifo(self) -> Path:
        return self.root / "mic.fifo"

    @property
    def asound_conf(self) -> Path:
        return self.root / "asound.conf"


def program(name: str) -> str:
    """An installed console script: next to this Python first (the venv), else on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise StackError(f"{name} is not installed (pip install -e '.[agent,gateway]')")
    return found


def mosquitto() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise StackError("mosquitto is not installed (apt-get install mosquitto)")
    return found


def gateway_config(layout: Layout, ports: Ports) -> str:
    """The demo gateway's settings file: its own state dir, ports and broker; the
    embedded simulator's credentials (the defaults); short job polls and backoffs."""
    broker_url = f"mqtt://{HOST}:{ports.broker}"
    gateway_url = f"http://{HOST}:{ports.gateway}"
    mosquitto_user = "root" if os.geteuid() == 0 else "mosquitto"
    return "\n".join(
        [
            "# room-gateway settings of one `room-gateway demo` run; removed with it.",
            "[gateway]",
            f"state_dir = {_quote(layout.gateway_state)}",
            "",
            "[gateway.http]",
            f'host = "{HOST}"',
            f"port = {ports.gateway}",
            "",
            "[gateway.blueprint]  # the simulator, with its default credentials",
            f'base_url = "http://{HOST}:{ports.simulator}"',
            "backoff_base_s = 0.2",
            "backoff_max_s = 2.0",
            "",
            "[gateway.jobs]",
            "poll_interval_s = 0.2",
            "backoff_base_s = 0.5",
            "backoff_max_s = 5.0",
            "",
            "[gateway.mqtt]",
            f'broker_url = "{broker_url}"',
            "reconnect_min_s = 1.0",
            "reconnect_max_s = 2.0",
            "",
            "[gateway.devices]",
            f'gateway_url = "{gateway_url}"',
            "",
            "[gateway.broker]  # what broker-config writes into mosquitto.conf",
            f'host = "{HOST}"',
            f"port = {ports.broker}",
            "persistence = false",
            f'user = "{mosquitto_user}"',
            "# the privacy probe watches rooms/# as gateway-probe (the broker makes every client",
            "# id the user name: as `gateway` it would knock the relay off)",
            'replicas = ["probe"]',
            "",
        ]
    )


class Stack:
    """The demo's processes and the commands that set them up."""

    def __init__(self, layout: Layout, ports: Ports) -> None:
        self.layout = layout
        self.ports = ports
        self.room = ROOM
        self.gateway_url = f"http://{HOST}:{ports.gateway}"
        self.simulator_url = f"http://{HOST}:{ports.simulator}"
        self.broker_url = f"mqtt://{HOST}:{ports.broker}"
        self._room_gateway = program("room-gateway")
        self._room_agent = program("room-agent")
        self._mosquitto = mosquitto()
        self._env = clean_env({})
        self.broker = self._child("mosquitto", [self._mosquitto, "-c", self._broker_conf()])
        self.simulator = self._child(
            "simulator",
            [
                self._room_gateway, "simulator", "--host", HOST,
                "--port", str(ports.simulator),
                "--callback-url", f"{self.gateway_url}/v1/webhooks/blueprint",
            ],
        )  # fmt: skip
        self.gateway = self._child("gateway", [*self._gateway_cli(), "serve"])
        self.agent: Child | None = None

    @property
    def children(self) -> list[Child]:
        """In start order; stopped in the reverse of it, the agent first."""
        started = [self.broker, self.simulator, self.gateway]
        return started + ([self.agent] if self.agent is not None else [])

    def child(self, name: str) -> Child | None:
        return next((c for c in self.children if c.name == name), None)

    # --- set-up with the gateway's own commands ---------------------------------------------

    def write_config(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.layout.config.write_text(gateway_config(self.layout, self.ports))

    def provision(self) -> str:
        """keygen, broker-config, device add, partner-token create; returns the token."""
        self.command("keygen")
        self.command("broker-config", "--out", str(self.layout.broker_dir))
        device = str(self.layout.device_dir)
        self.command(
            "device", "add", self.room, "--name", ROOM_LABEL, "--out", device,
            "--install-dir", device,
        )  # fmt: skip
        return self.command("partner-token", "create", "--label", "demo").strip()

    def command(self, *args: str) -> str:
        """Run ``room-gateway --config <demo config> ARGS``; its stdout, or StackError."""
        argv = [*self._gateway_cli(), *args]
        try:
            done = subprocess.run(
                argv,
                cwd=self.layout.root,
                env=self._env,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StackError(
                f"room-gateway {args[0]}: no answer in {COMMAND_TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0:
            last = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise StackError(f"room-gateway {' '.join(args[:2])} failed:\n{last}")
        return done.stdout

    # --- the processes ------------------------------------------------------------------------

    def start_services(self) -> None:
        """Broker, simulator and gateway, started together (readiness is waited for later)."""
        for child in (self.broker, self.simulator, self.gateway):
            child.start()

    def start_agent(self) -> Child:
        """``room-agent run`` as device ``add`` configured it; the environment adds only what
        makes this machine a room: the ALSA microphone, a state dir, the spool's floor."""
        env = dict(self._env)
        env.update(write_asound_conf(self.layout.asound_conf, self.layout.fifo))
        env.update(
            ROOM_AGENT_CONFIG=str(self.layout.device_dir / "agent.toml"),
            # The secrets as systemd's LoadCredential= hands them to the service.
            CREDENTIALS_DIRECTORY=str(self.layout.device_dir),
            ROOM_AGENT_STATE_DIR=str(self.layout.agent_state),
            ROOM_AGENT_AUDIO__DEVICE=PCM_NAME,
            # The demo's session is a few hundred kB; do not demand 256 MB free in /tmp.
            ROOM_AGENT_SPOOL__MIN_FREE_BYTES="0",
        )
        self.agent = Child(
            "agent", [self._room_agent, "run"], self.layout.logs / "agent.log",
            self.layout.root, env,
        )  # fmt: skip
        return self.agent.start()

    def gateway_password(self) -> str:
        """The gateway's MQTT password, as broker-config wrote it (for the privacy probe)."""
        return (self.layout.gateway_state / "mqtt-password").read_text().strip()

    def logs(self) -> list[Path]:
        return sorted(self.layout.logs.glob("*.log"))

    def _child(self, name: str, argv: list[str]) -> Child:
        return Child(name, argv, self.layout.logs / f"{name}.log", self.layout.root, self._env)

    def _gateway_cli(self) -> list[str]:
        return [self._room_gateway, "--config", str(self.layout.config)]

    def _broker_conf(self) -> str:
        return str(self.layout.broker_dir / "mosquitto.conf")


def _quote(path: Path) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(path))
