"""Real processes for the gateway tests: `room-gateway simulator` and `room-gateway serve`
on free loopback ports, configured only through the environment, talking real HTTP.

One simulator serves all gateway tests (reset between tests); each test module starts its
own gateway, which tests can SIGKILL and restart on the same state directory and port.
Timings are shrunk (backoff, polls, processing) so fault tests take seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
from pydantic import SecretStr

from gateway.blueprint.defaults import DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET
from gateway.store import Database, Location, PostgresLocation, SqliteLocation, parse_url
from tests.support.postgres import PostgresServer
from tests.support.processes import Service, free_port, wait_for_http

ROOM_GATEWAY = str(Path(sys.executable).with_name("room-gateway"))
PARTNER_TOKEN = "rgp_test-token-configured-in-env"
SIMULATOR_FLAGS = ("--processing-delay", "0.05", "--webhook-retry-interval", "0.2")
# Names used by the tests; the log checks grep for every one of them.
CLINICIAN = {"first_name": "Adelaide", "last_name": "Quintrell", "email": "aq@clinic.example"}
CLIENT_NAMES = {"first_name": "Bartholomew", "last_name": "Zanzibarre"}
PHI_STRINGS = ("Adelaide", "Quintrell", "aq@clinic.example", "Bartholomew", "Zanzibarre")
SECRETS = (DEFAULT_CLIENT_SECRET, "sim-api-key", PARTNER_TOKEN)
FAST_ENV = {
    "ROOM_GATEWAY_BLUEPRINT__BACKOFF_BASE_S": "0.05",
    "ROOM_GATEWAY_BLUEPRINT__BACKOFF_MAX_S": "2",
    "ROOM_GATEWAY_BLUEPRINT__TIMEOUT_S": "10",
    "ROOM_GATEWAY_JOBS__BACKOFF_BASE_S": "0.1",
    "ROOM_GATEWAY_JOBS__BACKOFF_MAX_S": "1",
    "ROOM_GATEWAY_JOBS__POLL_INTERVAL_S": "0.2",
    "ROOM_GATEWAY_PARTNER__ENSURE_WAIT_S": "5",
}


class SimulatorProcess:
    def __init__(self, service: Service, url: str) -> None:
        self.service = service
        self.url = url
        self._http = httpx.Client(base_url=url, timeout=10)

    def state(self) -> dict[str, Any]:
        return self._control("GET", "/_sim/state")

    def faults(self, **knobs: Any) -> dict[str, Any]:
        return self._control("POST", "/_sim/faults", json=knobs)

    def set_callback(self, url: str | None) -> None:
        self._control("PUT", "/_sim/callback", json={"url": url})

    def reset(self) -> None:
        self._control("POST", "/_sim/reset")

    def restart(self) -> None:
        """Kill the process and start it again on the same port: Blueprint has lost every
        record (the gateway's cache of Blueprint ids is now stale)."""
        self.service.kill()
        self.service.start()
        wait_for_http(f"{self.url}/_sim/state", timeout=20)

    def records(self, path: str, **params: str) -> list[dict[str, Any]]:
        """A record listing as Blueprint serves it, e.g. records("/clinicians")."""
        auth = self._http.post(
            "/partners/authenticate",
            headers={"X-API-Key": DEFAULT_API_KEY},
            json={"clientId": DEFAULT_CLIENT_ID, "clientSecret": DEFAULT_CLIENT_SECRET},
        )
        auth.raise_for_status()
        headers = {"X-API-Key": DEFAULT_API_KEY, "Access-Token": auth.json()["accessToken"]}
        response = self._http.get(path, headers=headers, params=params)
        response.raise_for_status()
        return response.json()["items"]

    def _control(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()


class GatewayProcess:
    """`room-gateway serve` with its settings in the environment, and its admin CLI."""

    def __init__(self, state_dir: Path, blueprint_url: str, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = f"{self.url}/v1/webhooks/blueprint"
        self.env = {
            "PYTHONUNBUFFERED": "1",
            "ROOM_GATEWAY_STATE_DIR": str(state_dir),
            "ROOM_GATEWAY_HTTP__HOST": "127.0.0.1",
            "ROOM_GATEWAY_HTTP__PORT": str(self.port),
            "ROOM_GATEWAY_BLUEPRINT__BASE_URL": blueprint_url,
            "ROOM_GATEWAY_PARTNER__TOKENS": json.dumps([PARTNER_TOKEN]),
            "ROOM_GATEWAY_TESTING__AUDIO_ENDPOINT": "true",
            **FAST_ENV,
            **env,
        }
        self.log_path = state_dir / "gateway.log"
        self.service: Service | None = None
        self.http = httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {PARTNER_TOKEN}"}
        )

    def start(self) -> GatewayProcess:
        self.service = Service([ROOM_GATEWAY, "serve"], self.log_path, env=self._clean_env())
        self.service.start()
        wait_for_http(f"{self.url}/healthz", timeout=20)
        return self

    def kill(self) -> None:
        assert self.service is not None
        self.service.kill()

    def behind(self, url: str) -> GatewayProcess:
        """This gateway's settings and store, its HTTP through ``url`` (a load balancer)."""
        front = self.replica("front")
        front.url, front.webhook_url = url, f"{url}/v1/webhooks/blueprint"
        front.http = httpx.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {PARTNER_TOKEN}"}
        )
        return front

    def replica(self, name: str, **env: str) -> GatewayProcess:
        """Another `serve` on this one's state directory (its keys) and store, on a port of
        its own, as replica ``name``: what a second host with the same files runs."""
        same = {k: v for k, v in self.env.items() if k != "ROOM_GATEWAY_HTTP__PORT"}
        other = GatewayProcess(
            self.state_dir,
            self.env["ROOM_GATEWAY_BLUEPRINT__BASE_URL"],
            {**same, "ROOM_GATEWAY_REPLICA": name, **env},
        )
        other.log_path = self.state_dir / f"gateway-{name}.log"
        return other

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [ROOM_GATEWAY, *args], env=self._clean_env(), capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"room-gateway {' '.join(args)}: {result.stderr}")
        return result

    @property
    def store_location(self) -> Location:
        """The gateway's store, as its settings (environment) name it."""
        url = self.env.get("ROOM_GATEWAY_STORE__URL")
        if not url:
            return SqliteLocation(self.state_dir / "gateway.db")
        location = parse_url(url)
        assert isinstance(location, PostgresLocation)
        password = Path(self.env["ROOM_GATEWAY_STORE__PASSWORD_FILE"]).read_text().strip()
        return dataclasses.replace(location, password=SecretStr(password))

    def query(self, sql: str, *params: Any) -> list[Any]:
        """Read the gateway's store directly (the store's own SQL, either engine)."""
        db = Database.open(self.store_location, migrate=False)
        try:
            return db.call(lambda conn: conn.execute(sql, params).fetchall(), write=False)
        finally:
            db.close()

    def execute(self, sql: str, *params: Any) -> None:
        """Change the gateway's store behind its back (a fault: a lost or damaged row)."""
        db = Database.open(self.store_location, migrate=False)
        try:
            db.call(lambda conn: conn.execute(sql, params))
        finally:
            db.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _clean_env(self) -> dict[str, str]:
        """The test runner's ROOM_GATEWAY_* variables must not leak into the child."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("ROOM_GATEWAY_")}
        return {**base, **self.env}

    # --- partner API helpers --------------------------------------------------------------

    def put_people(self, clinician: str, client: str) -> None:
        answer = self.http.put(f"/v1/clinicians/{clinician}", json=CLINICIAN)
        assert answer.status_code in (200, 202), answer.text
        body = {**CLIENT_NAMES, "clinician_external_id": clinician}
        answer = self.http.put(f"/v1/clients/{client}", json=body)
        assert answer.status_code in (200, 202), answer.text

    def start_session(self, room: str, clinician: str, client: str, **extra: Any) -> str:
        body = {
            "room": room,
            "clinician_external_id": clinician,
            "client_external_id": client,
            **extra,
        }
        answer = self.http.post("/v1/sessions", json=body)
        # 202 "starting" with room devices (the relay on), 201 "recording" without.
        assert answer.status_code in (201, 202), answer.text
        return answer.json()["session_id"]

    def attach_audio(self, session_id: str, audio: Path) -> httpx.Response:
        return self.http.post(
            f"/v1/sessions/{session_id}/audio",
            content=audio.read_bytes(),
            headers={"Content-Type": "audio/flac"},
        )

    def session(self, session_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/v1/sessions/{session_id}")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_for_session(
        self,
        session_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 20.0,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                current = self.session(session_id)
            except httpx.TransportError:
                current = {}
            if current and predicate(current):
                return current
            if time.monotonic() > deadline:
                raise AssertionError(f"session never matched: {current}\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def wait_for_state(self, session_id: str, state: str, timeout: float = 20.0) -> dict:
        return self.wait_for_session(session_id, lambda s: s["state"] == state, timeout)


def steps(session: dict[str, Any]) -> list[str]:
    return [entry["step"] for entry in session["timeline"]]


@pytest.fixture(scope="session")
def blueprint_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    with simulator(tmp_path_factory.mktemp("simulator")) as started:
        yield started


@contextlib.contextmanager
def simulator(directory: Path) -> Iterator[SimulatorProcess]:
    """A simulator of one's own (the shared one is ``blueprint_sim``)."""
    port = free_port()
    argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS]
    service = Service(argv, directory / "simulator.log", env={"PYTHONUNBUFFERED": "1"}).start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/_sim/state", timeout=20)
        yield SimulatorProcess(service, url)
    finally:
        service.stop()


@pytest.fixture
def sim(blueprint_sim: SimulatorProcess) -> SimulatorProcess:
    """The shared simulator, reset: no records, no faults, default timings."""
    blueprint_sim.reset()
    return blueprint_sim


GatewayFactory = Callable[..., GatewayProcess]
StoreEnv = Callable[[Path], dict[str, str]]


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    """The store engine of the module's gateways: SQLite, unless the module runs on both
    (``pytestmark = ON_BOTH_ENGINES`` from tests.support.postgres)."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="module")
def store_env(engine: str, request: pytest.FixtureRequest) -> Iterator[StoreEnv]:
    """The settings (environment) that put a gateway's store on the module's engine: for
    PostgreSQL a new database on the session's server, its password in a file."""
    created: list[str] = []

    def env(state_dir: Path) -> dict[str, str]:
        if engine == "sqlite":
            return {}
        server: PostgresServer = request.getfixturevalue("postgres")
        name = server.database()
        created.append(name)
        state_dir.mkdir(parents=True, exist_ok=True)
        return {
            "ROOM_GATEWAY_STORE__URL": server.url(name),
            "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(server.password_file(state_dir)),
        }

    yield env
    if created:
        server = request.getfixturevalue("postgres")
        for name in created:
            server.drop(name)


@pytest.fixture(scope="module")
def gateway_factory(
    blueprint_sim: SimulatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
    store_env: StoreEnv,
) -> Iterator[GatewayFactory]:
    """Start gateways (stopped at the end of the module) against the shared simulator."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        state_dir = tmp_path_factory.mktemp("gateway")
        gateway = GatewayProcess(state_dir, blueprint_sim.url, {**store_env(state_dir), **env})
        started.append(gateway.start())
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(gateway_factory: GatewayFactory) -> GatewayProcess:
    """One gateway per test module, with room-1 .. room-9 provisioned."""
    gateway = gateway_factory()
    gateway.cli("room", "add", *(f"room-{n}" for n in range(1, 10)))
    return gateway


@pytest.fixture
def linked(sim: SimulatorProcess, gateway: GatewayProcess) -> GatewayProcess:
    """The module's gateway, with the (reset) simulator's webhooks pointed at it."""
    sim.set_callback(gateway.webhook_url)
    return gateway


@pytest.fixture(scope="session")
def flac_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seconds of a tone as FLAC: the simulator decodes what it is sent."""
    path = tmp_path_factory.mktemp("audio") / "session.flac"
    t = np.arange(2 * 16_000) / 16_000
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)
    return path


# --- a real browser ----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = Path(
    os.environ.get("ROOM_AUDIO_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium, headless, driven by Playwright. Only tests/gateway/console uses
    it, so this is one start per test session; module scope ends Playwright's event loop
    with that module (while it runs, later tests could not call asyncio.run)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def screenshot(page: Any, name: str) -> Path:
    """Keep a screenshot as a test artefact (test-artifacts/, or $ROOM_AUDIO_TEST_ARTIFACTS)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
