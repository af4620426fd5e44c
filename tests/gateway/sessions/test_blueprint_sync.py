"""The gateway's Blueprint records stay in sync with Blueprint.

Seen before: after Blueprint lost its records (the simulator restarted, as when
blueprint.base_url moves to another environment on the same database) every session
failed with ``create_session: Blueprint answered HTTP 422``, ``jobs retry`` failed the same
way, and a PUT with a changed name answered 200 with the old id, never sending the name.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    CLIENT_NAMES,
    CLINICIAN,
    GatewayProcess,
    SimulatorProcess,
    simulator,
    steps,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def own_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """This module restarts its simulator: it must not be the one the others share."""
    with simulator(tmp_path_factory.mktemp("own-simulator")) as started:
        yield started


@pytest.fixture(scope="module")
def synced(
    own_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("gateway"),
        own_sim.url,
        {"ROOM_GATEWAY_JOBS__MAX_ATTEMPTS": "3"},
    ).start()
    gateway.cli("room", "add", "room-1", "room-2")
    own_sim.set_callback(gateway.webhook_url)
    try:
        yield gateway
    finally:
        gateway.stop()


def complete_session(gateway: GatewayProcess, audio: Path, room: str = "room-1") -> dict:
    session_id = gateway.start_session(room, "clin-sync", "client-sync")
    assert gateway.attach_audio(session_id, audio).status_code == 202
    return gateway.wait_for_state(session_id, "notes_ready", timeout=30)


def test_sessions_complete_after_blueprint_lost_its_records(
    own_sim: SimulatorProcess, synced: GatewayProcess, flac_audio: Path
) -> None:
    synced.put_people("clin-sync", "client-sync")
    first = complete_session(synced, flac_audio)
    old_clinician_id = first["blueprint"]["clinician_id"]

    own_sim.restart()  # Blueprint forgets everything; the gateway's cache is intact
    own_sim.set_callback(synced.webhook_url)
    second = complete_session(synced, flac_audio)

    assert "blueprint_ids_repaired" in steps(second)
    repaired = next(e for e in second["timeline"] if e["step"] == "blueprint_ids_repaired")
    assert "clinician clin-sync: unknown to Blueprint; created again" in repaired["detail"]
    assert "create_session retried" in repaired["detail"]
    assert second["blueprint"]["clinician_id"] != old_clinician_id
    # Nothing created twice: one clinician, one client, one session in the new Blueprint.
    assert len(own_sim.records("/clinicians")) == 1
    assert len(own_sim.records("/clients")) == 1
    clinician = synced.http.get("/v1/clinicians/clin-sync").json()
    assert clinician["blueprint_id"] == second["blueprint"]["clinician_id"]


def test_resync_then_jobs_retry_completes_a_failed_session(
    own_sim: SimulatorProcess, synced: GatewayProcess, flac_audio: Path
) -> None:
    synced.put_people("clin-sync", "client-sync")
    own_sim.restart()
    own_sim.set_callback(synced.webhook_url)
    own_sim.faults(fail_next=1000, fail_status=503)  # Blueprint down: the session fails
    session_id = synced.start_session("room-2", "clin-sync", "client-sync")
    failed = synced.wait_for_state(session_id, "failed", timeout=60)
    job = next(job for job in failed["pending"] if job["state"] == "failed")
    own_sim.faults(fail_next=0)

    resync = synced.cli("blueprint", "resync")
    assert "clinician clin-sync: unknown to Blueprint; created again" in resync.stdout
    assert "client client-sync: unknown to Blueprint; created again" in resync.stdout
    again = synced.cli("blueprint", "resync", "--clinician", "clin-sync")
    assert again.stdout.strip() == "clinician clin-sync: id confirmed"

    synced.cli("jobs", "retry", str(job["job_id"]))
    synced.wait_for_state(session_id, "recording")
    assert synced.attach_audio(session_id, flac_audio).status_code == 202
    done = synced.wait_for_state(session_id, "notes_ready", timeout=30)
    assert "blueprint_ids_repaired" not in steps(done)  # resync had repaired them already
    assert len(own_sim.records("/clinicians")) == 1
    assert len(own_sim.records("/clients")) == 1


def test_put_with_changed_details_updates_blueprint(
    own_sim: SimulatorProcess, synced: GatewayProcess
) -> None:
    synced.put_people("clin-rename", "client-rename")
    before = own_sim.records("/clinicians", externalId="clin-rename")
    assert before[0]["firstName"] == CLINICIAN["first_name"]

    answer = synced.http.put("/v1/clinicians/clin-rename", json={**CLINICIAN, "first_name": "Zed"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["state"] == "ensured"
    assert answer.json()["details"] == "in_blueprint"
    after = own_sim.records("/clinicians", externalId="clin-rename")
    assert [r["id"] for r in after] == [before[0]["id"]] and after[0]["firstName"] == "Zed"

    body = {**CLIENT_NAMES, "last_name": "Renamed", "clinician_external_id": "clin-rename"}
    assert synced.http.put("/v1/clients/client-rename", json=body).status_code == 200
    assert own_sim.records("/clients", externalId="client-rename")[0]["lastName"] == "Renamed"


def test_changed_details_stay_local_when_updates_are_off(
    own_sim: SimulatorProcess, tmp_path: Path
) -> None:
    gateway = GatewayProcess(
        tmp_path, own_sim.url, {"ROOM_GATEWAY_BLUEPRINT__RECORD_UPDATES": "false"}
    ).start()
    try:
        gateway.put_people("clin-local", "client-local")
        answer = gateway.http.put(
            "/v1/clinicians/clin-local", json={**CLINICIAN, "first_name": "Zed"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["details"] == "local_only"
        record = own_sim.records("/clinicians", externalId="clin-local")[0]
        assert record["firstName"] == CLINICIAN["first_name"]
    finally:
        gateway.stop()


def test_ids_are_scoped_to_the_blueprint_environment(
    own_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """The same database pointed at another Blueprint (staging -> production): no id of
    the first is used in the second; the records are ensured there, once."""
    gateway = GatewayProcess(tmp_path, own_sim.url, {}).start()
    try:
        gateway.put_people("clin-env", "client-env")
        staging_id = gateway.http.get("/v1/clinicians/clin-env").json()["blueprint_id"]
    finally:
        gateway.stop()
    with simulator(tmp_path_factory.mktemp("production")) as production:
        moved = GatewayProcess(tmp_path, production.url, {}).start()
        try:
            pending = moved.http.get("/v1/clinicians/clin-env").json()
            assert pending["blueprint_id"] is None and pending["state"] == "pending"
            moved.put_people("clin-env", "client-env")
            production_id = moved.http.get("/v1/clinicians/clin-env").json()["blueprint_id"]
            assert production_id not in (None, staging_id)
            assert [r["id"] for r in production.records("/clinicians")] == [production_id]
            environments = moved.query("SELECT DISTINCT blueprint_env FROM clinicians")
            assert len(environments) == 1 and str(environments[0][0]).startswith("bpenv_")
        finally:
            moved.stop()
