"""The broker and the stand-in gateway a provisioned room device (tests/agent/device_setup.py)
talks to; a test module with a device of its own defines its own."""

import pytest

from tests.agent.device_setup import DEVICE, KEY, PASSWORD, TOKEN
from tests.support.ingest_server import IngestServer
from tests.support.mosquitto import Broker


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker", users={DEVICE: PASSWORD, "gateway": "gateway-secret"}) as b:
        yield b


@pytest.fixture
def ingest():
    with IngestServer(KEY, {DEVICE: TOKEN}) as server:
        yield server
