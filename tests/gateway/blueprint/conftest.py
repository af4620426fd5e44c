"""Real servers for the Blueprint tests: the simulator as a `room-gateway simulator`
subprocess on a free loopback port, and a webhook receiver as a uvicorn server in a thread.

One simulator process serves the whole session (start-up costs ~1 s); every test starts
from a clean slate through POST /_sim/reset.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile
import uvicorn
from fastapi import FastAPI, Request, Response

from gateway.blueprint.client import BlueprintClient
from gateway.blueprint.defaults import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
)
from tests.support.eventually import eventually
from tests.support.processes import Service, free_port, wait_for_http, wait_for_port

ROOM_GATEWAY = str(Path(sys.executable).with_name("room-gateway"))
# Fast timings for tests; real Blueprint retries webhooks every 5 minutes.
SIMULATOR_FLAGS = ("--processing-delay", "0.05", "--webhook-retry-interval", "0.2")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def start_simulator(port: int, log_path: Path, *flags: str) -> Service:
    argv = [ROOM_GATEWAY, "simulator", "--port", str(port), *SIMULATOR_FLAGS, *flags]
    return Service(argv, log_path, env={"PYTHONUNBUFFERED": "1"}).start()


class Simulator:
    """Handle on the running simulator: its URL, control API, log, and client factory."""

    def __init__(self, url: str, service: Service) -> None:
        self.url = url
        self.service = service

    def state(self) -> dict[str, Any]:
        return self._control("GET", "/_sim/state")

    def faults(self, **knobs: Any) -> dict[str, Any]:
        return self._control("POST", "/_sim/faults", json=knobs)

    def set_callback(self, url: str | None) -> dict[str, Any]:
        return self._control("PUT", "/_sim/callback", json={"url": url})

    def reset(self) -> None:
        self._control("POST", "/_sim/reset")

    def calls(self, route: str) -> dict[str, int]:
        return self.state()["calls"].get(route, {})

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        return eventually(
            lambda: state if predicate(state := self.state()) else None,
            timeout,
            what="the simulator's state to match",
        )

    def token(self) -> str:
        response = httpx.post(
            f"{self.url}/partners/authenticate",
            headers={"X-API-Key": DEFAULT_API_KEY},
            json={"clientId": DEFAULT_CLIENT_ID, "clientSecret": DEFAULT_CLIENT_SECRET},
        )
        response.raise_for_status()
        return response.json()["accessToken"]

    def headers(self) -> dict[str, str]:
        return {"X-API-Key": DEFAULT_API_KEY, "Access-Token": self.token()}

    def client(self, **options: Any) -> BlueprintClient:
        return make_client(self.url, **options)

    def log(self) -> str:
        return self.service.log()

    def _control(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = httpx.request(method, self.url + path, timeout=5, **kwargs)
        response.raise_for_status()
        return response.json()


def make_client(
    url: str,
    *,
    api_key: str = DEFAULT_API_KEY,
    client_id: str = DEFAULT_CLIENT_ID,
    client_secret: str = DEFAULT_CLIENT_SECRET,
    **options: Any,
) -> BlueprintClient:
    """A client with test-sized delays: retries take milliseconds, not minutes."""
    settings: dict[str, Any] = {
        "timeout_s": 5,
        "max_attempts": 5,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.2,
    }
    settings.update(options)
    return BlueprintClient(url, api_key, client_id, client_secret, **settings)


@pytest.fixture(scope="session")
def simulator_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("simulator") / "simulator.log"
    service = start_simulator(port, log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/_sim/state")
        yield Simulator(url, service)
    finally:
        service.stop()


@pytest.fixture
def sim(simulator_service: Simulator) -> Simulator:
    simulator_service.reset()
    return simulator_service


# --- webhook receiver ------------------------------------------------------------------------


@dataclass
class Delivery:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP endpoint for webhooks; answers from ``script`` first, then 200."""

    url: str
    script: list[int] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Delivery]:
        eventually(lambda: len(self.deliveries) >= count, timeout, what=f"{count} webhooks")
        return list(self.deliveries)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    hooks = Receiver(url=f"http://127.0.0.1:{port}/hooks/blueprint")
    app = FastAPI()

    @app.post("/hooks/blueprint")
    async def receive(request: Request) -> Response:
        body = await request.body()
        hooks.deliveries.append(Delivery(time.monotonic(), dict(request.headers), body))
        status = hooks.script.pop(0) if hooks.script else 200
        return Response(status_code=status)

    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for_port(port)
    try:
        yield hooks
    finally:
        server.should_exit = True
        thread.join(timeout=5)


# --- audio -----------------------------------------------------------------------------------


AudioMaker = Callable[..., Path]


@pytest.fixture
def make_audio(tmp_path: Path) -> AudioMaker:
    """Writes a tone of exactly ``seconds`` at 16 kHz mono; the content is irrelevant."""

    def write(seconds: float, fmt: str = "FLAC", subtype: str | None = None) -> Path:
        rate = 16000
        t = np.arange(round(seconds * rate)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
        path = tmp_path / f"audio-{seconds}-{subtype or fmt}.{fmt.lower()}"
        soundfile.write(path, samples, rate, format=fmt, subtype=subtype)
        return path

    return write
