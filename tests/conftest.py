"""Settings and servers for the whole test session."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings
from gateway.store import Location, SqliteLocation
from tests.support.postgres import PostgresServer

# Never read a real installation's credentials (/etc/room-audio/credentials) in tests.
os.environ["ROOM_AUDIO_CREDENTIALS"] = "/nonexistent/room-audio-credentials"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run (a database per test keeps tests apart)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Location]:
    """Where a test's store is: a new SQLite file, or a new database on the test server,
    reached as the gateway reaches it (a URL without password, the password from a file)."""
    if request.param == "sqlite":
        yield SqliteLocation(tmp_path / "gateway.db")
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.database()
    settings = GatewaySettings(
        state_dir=tmp_path,
        store={"url": server.url(name), "password_file": server.password_file(tmp_path)},
    )
    yield settings.store_location
    server.drop(name)
