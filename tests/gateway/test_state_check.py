"""A damaged or missing database is never a silent empty start (issue 10, rows 20 and 23).

Real `room-gateway serve`, its admin commands and `doctor` as processes, on a state
directory a gateway has used (its audio key, a room, a partner token): a deleted or
zero-length gateway.db makes them refuse with one line naming the evidence and the fix
(and nothing is created); a garbage page inside the file is found at start (quick_check)
and /readyz says so (database_integrity, critical: 503) as does doctor; a PostgreSQL
store.url naming an empty database beside a used state directory is refused the same
way; a disk under state_dir below its floor makes /readyz 503 (`disk`).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GatewayProcess, SimulatorProcess
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.timeout(120)
PAGE = 4096


@pytest.fixture
def used(tmp_path: Path, blueprint_sim: SimulatorProcess) -> Iterator[GatewayProcess]:
    """A gateway that ran once: keys, a room, a partner token; stopped."""
    gateway = GatewayProcess(tmp_path / "state", blueprint_sim.url, {})
    gateway.cli("keygen")
    gateway.start()
    gateway.cli("room", "add", "room-1")
    gateway.cli("partner-token", "create")
    gateway.stop()
    yield gateway
    gateway.stop()


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def serve_once(gateway: GatewayProcess) -> subprocess.CompletedProcess[str]:
    """`serve` that is expected to refuse (it would otherwise run: then the timeout)."""
    return gateway.cli("serve", check=False)


@pytest.mark.parametrize("damage", ["deleted", "zero_length"])
def test_a_lost_database_beside_a_used_state_dir_is_refused(
    used: GatewayProcess, damage: str
) -> None:
    db = used.state_dir / "gateway.db"
    if damage == "deleted":
        db.unlink()
        missing = "gateway.db is missing"
    else:
        os.truncate(db, 0)
        missing = "gateway.db is empty (0 bytes)"
    evidence = str(used.state_dir / "audio-key")
    line = refused(serve_once(used), missing, evidence, "restore the database")
    assert "move the state directory aside" in line
    for command in (("room", "list"), ("partner-token", "list"), ("jobs", "list")):
        refused(used.cli(*command, check=False), missing, evidence)
    refused(used.cli("doctor", check=False), "store: problem:", missing)
    # Nothing made afresh: the evidence is kept for whoever restores it.
    assert not db.exists() if damage == "deleted" else db.stat().st_size == 0


def test_a_fresh_state_dir_with_only_a_sealing_key_starts(
    tmp_path: Path, blueprint_sim: SimulatorProcess
) -> None:
    gateway = GatewayProcess(tmp_path / "fresh", blueprint_sim.url, {})
    gateway.cli("keygen")
    assert "room-1 added" in gateway.cli("room", "add", "room-1").stdout


def garble_a_page(db: Path, table: str) -> int:
    """Overwrite one leaf page of ``table`` with garbage; returns the page number."""
    conn = sqlite3.connect(db)
    try:
        pages = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    assert len(pages) > 2, pages
    page = pages[len(pages) // 2][0]
    with db.open("r+b") as file:
        file.seek((page - 1) * PAGE)
        file.write(os.urandom(PAGE))
    return page


def test_a_garbage_page_is_found_at_start_and_reported(used: GatewayProcess) -> None:
    used.start()
    filler = [(f"{n:064x}", "filler", "received", 0.0) for n in range(3000)]
    conn = sqlite3.connect(used.state_dir / "gateway.db")
    with conn:
        conn.executemany(
            "INSERT INTO webhook_events (digest, event_type, outcome, received_at)"
            " VALUES (?, ?, ?, ?)",
            filler,
        )
    conn.close()
    assert httpx.get(f"{used.url}/readyz", timeout=10).status_code == 200
    used.stop()  # a clean stop: the WAL is checkpointed into the file
    assert not (used.state_dir / "gateway.db-wal").exists()
    garble_a_page(used.state_dir / "gateway.db", "webhook_events")

    used.start()
    answer = httpx.get(f"{used.url}/readyz", timeout=10)
    assert answer.status_code == 503, answer.text
    check = answer.json()["checks"]["database_integrity"]
    assert check["status"] == "failing" and check["critical"] is True
    assert "quick_check" in check["detail"] and "restore" in check["detail"]
    assert "database damaged" in used.log() and "Traceback" not in used.log()
    used.stop()
    line = refused(used.cli("doctor", check=False), "store: problem:", "quick_check")
    assert "restore it from a backup" in line


def test_an_empty_postgresql_database_beside_a_used_state_dir_is_refused(
    tmp_path: Path, blueprint_sim: SimulatorProcess, postgres: PostgresServer
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    first = postgres.database()
    env = {
        "ROOM_GATEWAY_STORE__URL": postgres.url(first),
        "ROOM_GATEWAY_STORE__PASSWORD_FILE": str(postgres.password_file(state)),
    }
    gateway = GatewayProcess(state, blueprint_sim.url, env)
    gateway.start()
    gateway.cli("room", "add", "room-1")
    gateway.stop()

    empty = postgres.database()  # e.g. a typo in store.url, or a restore that did not run
    gateway.env["ROOM_GATEWAY_STORE__URL"] = postgres.url(empty)
    try:
        refused(serve_once(gateway), "has no gateway schema", "audio-key", "store.url")
        refused(gateway.cli("room", "list", check=False), "has no gateway schema")
        refused(gateway.cli("doctor", check=False), "store: problem:", "no gateway schema")
        tables = gateway.query("SELECT COUNT(*) FROM information_schema.tables"
                               " WHERE table_name = 'schema_version'")  # fmt: skip
        assert tables[0][0] == 0, "nothing was created in it"
    finally:
        postgres.drop(empty)
        postgres.drop(first)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 260 MiB tmpfs: just above /readyz's 256 MiB floor (needs mount: root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=260m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_readyz_says_when_the_disk_is_full(
    small_disk: Path, blueprint_sim: SimulatorProcess
) -> None:
    gateway = GatewayProcess(small_disk / "state", blueprint_sim.url, {})
    gateway.start()
    try:
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
        filler = small_disk / "filler"
        filler.write_bytes(b"\0" * (16 * 1024 * 1024))
        answer = httpx.get(f"{gateway.url}/readyz", timeout=10)
        assert answer.status_code == 503, answer.text
        disk = answer.json()["checks"]["disk"]
        assert disk["status"] == "failing" and "below 256 MiB" in disk["detail"]
        filler.unlink()
        assert httpx.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    finally:
        gateway.stop()
