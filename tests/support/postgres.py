"""A real PostgreSQL server for tests: initdb + pg_ctl in a temporary directory, on a free
loopback port, really stopped, killed and restarted.

As root the server runs as the ``postgres`` user (initdb refuses root), in a directory that
user owns. Connections from 127.0.0.1 need a password (scram-sha-256), except the
``postgres`` superuser's, so every test that uses a ``gateway`` role also goes through the
gateway's password handling. ``fsync=off``: tests restart the server but never cut the
power under it (a commit is written before it returns, so a crash loses nothing), and the
shared machine's disk is spared (benchmarks start their own server with fsync on).

``ROOM_AUDIO_TEST_POSTGRES_URL=postgresql://postgres@host:port/postgres`` (a superuser)
makes the tests use that server instead; restarts are then skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.processes import free_port, wait_for_port

EXTERNAL_ENV = "ROOM_AUDIO_TEST_POSTGRES_URL"
GATEWAY_ROLE = "gateway"
ENGINES = ("sqlite", "postgresql")


# A module's mark to run its gateways on both stores: ``pytestmark = ON_BOTH_ENGINES``.
ON_BOTH_ENGINES = pytest.mark.parametrize("engine", ENGINES, indirect=True, scope="module")


def bin_dir() -> Path:
    """Debian's postgresql package: /usr/lib/postgresql/<major>/bin, newest major."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_major)
    if not found:
        pg_ctl = shutil.which("pg_ctl")
        if pg_ctl is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/setup-system.sh does it)")
        return Path(pg_ctl).parent
    return Path(found[-1]).parent


def _major(path: str) -> int:
    try:
        return int(Path(path).parts[-3])
    except ValueError:
        return 0


class PostgresServer:
    """One server; ``database()`` makes a fresh database (owned by the gateway role)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.password = secrets.token_urlsafe(16)
        self.external = os.environ.get(EXTERNAL_ENV)
        self.root: Path | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self._counter = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.external:
            self._psql(f"DO $$ BEGIN CREATE ROLE {GATEWAY_ROLE} LOGIN; EXCEPTION WHEN"
                       " duplicate_object THEN NULL; END $$")  # fmt: skip
            self._psql(f"ALTER ROLE {GATEWAY_ROLE} PASSWORD '{self.password}'")
            return self
        self.root = Path(tempfile.mkdtemp(prefix="room-audio-pg-"))
        self.port = free_port()
        self._chown(self.root)
        self._as_owner([str(bin_dir() / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "--no-sync", "-E", "UTF8"])  # fmt: skip
        hba = (
            "local all all trust\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        (self.data / "pg_hba.conf").write_text(hba)
        self._chown(self.data / "pg_hba.conf")
        self._pg_ctl_start()
        self._psql(f"CREATE ROLE {GATEWAY_ROLE} LOGIN PASSWORD '{self.password}'")
        return self

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def can_restart(self) -> bool:
        return not self.external

    def stop(self, mode: str = "fast") -> None:
        """``fast`` is a clean shutdown; ``immediate`` is a crash (recovery at next start)."""
        if self.external or self.root is None:
            return
        self._as_owner([str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                        "stop"], check=False)  # fmt: skip

    def start_again(self) -> None:
        self._pg_ctl_start()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start_again()

    def destroy(self) -> None:
        if self.root is not None:
            self.stop("immediate")
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    # --- databases ---------------------------------------------------------------------------

    def database(self, prefix: str = "t") -> str:
        """A new, empty database the gateway role owns; returns its name."""
        self._counter += 1
        name = f"{prefix}_{os.getpid()}_{self._counter}_{secrets.token_hex(3)}"
        self._psql(f"CREATE DATABASE {name} OWNER {GATEWAY_ROLE}")
        return name

    def drop(self, name: str) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, database: str, user: str = GATEWAY_ROLE) -> str:
        """A URL without a password (the gateway takes it from a file)."""
        host, port = self._address()
        return f"postgresql://{user}@{host}:{port}/{database}"

    def password_file(self, directory: Path) -> Path:
        path = directory / "database-password"
        path.write_text(self.password + "\n")
        path.chmod(0o600)
        return path

    def sql(self, statement: str, database: str = "postgres") -> str:
        return self._psql(statement, database)

    # --- helpers -----------------------------------------------------------------------------

    def _address(self) -> tuple[str, int]:
        if self.external:
            from urllib.parse import urlsplit

            parts = urlsplit(self.external)
            return parts.hostname or "127.0.0.1", parts.port or 5432
        return self.host, self.port

    def _psql(self, statement: str, database: str = "postgres") -> str:
        if self.external:
            from urllib.parse import urlsplit, urlunsplit

            parts = urlsplit(self.external)
            target = urlunsplit(parts._replace(path=f"/{database}"))
            argv = ["psql", target]
        else:
            argv = [str(bin_dir() / "psql"), "-h", self.host, "-p", str(self.port),
                    "-U", "postgres", "-d", database]  # fmt: skip
        result = subprocess.run(
            [*argv, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", statement],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, argv, result.stdout,
                                                result.stderr)  # fmt: skip
        return result.stdout.strip()

    def _pg_ctl_start(self) -> None:
        assert self.root is not None
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.host}"
            " -c max_connections=300 -c shared_buffers=32MB"
        )
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._as_owner([str(bin_dir() / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.root / "server.log"), "-w", "-t", "60", "-o", options,
                        "start"])  # fmt: skip
        wait_for_port(self.port, timeout=30)
        deadline = time.monotonic() + 30
        while True:  # accepting TCP is not yet accepting queries (recovery after a crash)
            try:
                self._psql("SELECT 1")
                return
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _as_owner(self, argv: list[str], check: bool = True) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=check, capture_output=True, cwd="/")

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")
