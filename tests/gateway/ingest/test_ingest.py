"""The gateway's HTTPS ingest against protocol/ingest.py, on a real `room-gateway serve`:
every answer a device can get, durability before the 200 (checked by SIGKILL), assembly
into one file that reaches the simulator with exactly the chunks' duration, retention.
Audio at rest is in the store (every replica reads it), sealed or encrypted: never a
plain FLAC on disk or in the database.
Devices are played by this test: chunks sealed as the agent seals them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.ingest import records
from gateway.ingest.assembly import Assembler, _Plan
from gateway.ingest.files import ChunkFiles
from gateway.keys import SealingKeys
from gateway.sessions.audio_vault import open_vault
from gateway.sessions.lifecycle import SessionLifecycle
from gateway.settings import IngestSettings, JobSettings
from gateway.store import Connection, Database, SqliteLocation
from protocol.envelope import generate_private_key, key_fingerprint, public_key_to_text
from protocol.ingest import SealingKeyInfo, sealing_key_path
from protocol.manifest import SessionManifest
from runtime.codec import decode
from tests.gateway.conftest import PHI_STRINGS, SECRETS, SimulatorProcess, StoreEnv, steps
from tests.gateway.deployment import Deployment, SealedChunk, tone
from tests.gateway.problems import assert_problem
from tests.support.eventually import eventually
from tests.support.postgres import ON_BOTH_ENGINES

pytestmark = [ON_BOTH_ENGINES, pytest.mark.timeout(120)]
MAX_CHUNK_BYTES = 200 * 1024


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess, store_env: StoreEnv
):
    root = tmp_path_factory.mktemp("ingest")
    deployment = Deployment(
        root,
        blueprint_sim.url,
        ("room-1", "room-2", "room-3"),
        None,  # no TLS
        None,  # devices are given the gateway itself
        (),  # one gateway
        **store_env(root / "gateway"),
        ROOM_GATEWAY_INGEST__MAX_CHUNK_BYTES=str(MAX_CHUNK_BYTES),
        ROOM_GATEWAY_INGEST__RETENTION_S="0",
    ).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def linked(
    deployed: Deployment, sim: SimulatorProcess, request: pytest.FixtureRequest
) -> Deployment:
    """The module's deployment with the (reset) simulator: people new to it each test."""
    sim.set_callback(deployed.gateway.webhook_url)
    deployed.people = (f"clin-{request.node.originalname}", f"client-{request.node.originalname}")
    deployed.gateway.put_people(*deployed.people)
    return deployed


def session_in(deployed: Deployment, room: str) -> str:
    return deployed.gateway.start_session(room, *deployed.people)


def stop(deployed: Deployment, session_id: str) -> None:
    assert deployed.gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200


def test_every_answer_of_the_chunk_contract(linked: Deployment) -> None:
    session_id = session_in(linked, "room-1")
    chunk = linked.seal("room-1", session_id, 0, tone(1.0))

    first = linked.put_chunk("room-1", session_id, chunk)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "session_id": session_id, "seq": 0, "sha256": chunk.sha256, "duplicate": False,
    }  # fmt: skip
    again = linked.put_chunk("room-1", session_id, chunk)
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    # Different content under a used seq (a fresh seal of other audio).
    other = linked.seal("room-1", session_id, 0, tone(1.0, hz=330))
    conflict = linked.put_chunk("room-1", session_id, other)
    assert "seq 0" in assert_problem(conflict, 409, "chunk_conflict")["detail"]

    # Tampered: one ciphertext bit flipped, the header untouched.
    blob = bytearray(linked.seal("room-1", session_id, 1, tone(1.0)).blob)
    blob[-20] ^= 1
    tampered = SealedChunk(1, bytes(blob), chunk.pcm, 0.0)
    answer = linked.put_chunk("room-1", session_id, tampered)
    assert "authentication" in assert_problem(answer, 422, "chunk_rejected")["detail"]
    # Sealed to another key.
    stranger = generate_private_key().public_key()
    wrong_key = linked.seal("room-1", session_id, 1, tone(1.0), recipient=stranger)
    answer = linked.put_chunk("room-1", session_id, wrong_key)
    assert "another gateway key" in assert_problem(answer, 422, "wrong_key")["detail"]
    # Header and path disagree: seq 2 sealed, sent as seq 1.
    mislabeled = linked.seal("room-1", session_id, 2, tone(1.0))
    answer = linked.put_chunk("room-1", session_id, SealedChunk(1, mislabeled.blob, tone(1), 0))
    assert "do not match the path" in assert_problem(answer, 422, "path_mismatch")["detail"]
    junk = SealedChunk(1, b"junk", tone(1), 0)
    assert linked.put_chunk("room-1", session_id, junk).status_code == 422

    # Over the size limit: ten seconds of noise do not compress.
    noise = (np.random.default_rng(1).standard_normal(160_000) * 8000).astype(np.int16)
    big = linked.seal("room-1", session_id, 3, noise)
    assert len(big.blob) > MAX_CHUNK_BYTES
    assert linked.put_chunk("room-1", session_id, big).status_code == 413

    # Wrong or missing token, another device's token or path, another room's session.
    fresh = linked.seal("room-1", session_id, 4, tone(1.0))
    assert linked.put_chunk("room-1", session_id, fresh, token="rgd_nope").status_code == 401
    assert linked.put_chunk("room-1", session_id, fresh, token="").status_code == 401
    room2_token = linked.devices["room-2"].token
    assert linked.put_chunk("room-1", session_id, fresh, token=room2_token).status_code == 403
    as_room2 = linked.seal("room-2", session_id, 4, tone(1.0))
    refused = linked.put_chunk("room-2", session_id, as_room2)
    assert "not started in room room-2" in assert_problem(refused, 403, "foreign_session")["detail"]
    wrong_type = linked.gateway.http.put(
        f"/v1/devices/room-1/sessions/{session_id}/chunks/4",
        content=fresh.blob,
        headers={"Authorization": f"Bearer {linked.devices['room-1'].token}"},
    )
    assert wrong_type.status_code == 415
    # A partner token is not a device token.
    partner = linked.gateway.http.put(
        f"/v1/devices/room-1/sessions/{session_id}/chunks/4", content=fresh.blob
    )
    assert partner.status_code == 401

    # None of this stored anything beyond chunk 0.
    with_chunks = linked.gateway.session(session_id)["audio"]
    assert (with_chunks["chunks_received"], with_chunks["speech_s"]) == (1, 1.0)
    stop(linked, session_id)
    assert linked.close("room-1", session_id, [chunk]).json()["complete"]
    linked.gateway.wait_for_state(session_id, "notes_ready")
    metrics = linked.gateway.http.get("/metrics").text
    assert 'gateway_ingest_requests_total{kind="chunk",status="409"}' in metrics
    assert 'gateway_ingest_requests_total{kind="auth",status="403"}' in metrics
    assert "gateway_mqtt_connected 1.0" in metrics
    # Where a chunk's time went, by stage (tests/benchmarks/ingest_limit.py prints it).
    assert 'gateway_stage_cpu_seconds_total{stage="chunk.audio_check"}' in metrics
    assert 'gateway_stage_seconds_total{stage="chunk.commit"}' in metrics
    log = linked.gateway.log()
    assert "Traceback" not in log and " 500 " not in log
    assert not [text for text in (*PHI_STRINGS, *SECRETS) if text in log]
    assert linked.devices["room-1"].token not in log


def stored_audio(deployed: Deployment, session_id: str) -> tuple[list[bytes], list[bytes]]:
    """What the store holds of a session's audio: sealed chunks, encrypted parts."""
    sealed = deployed.gateway.query(
        "SELECT sealed FROM chunks WHERE session_id = ? AND sealed IS NOT NULL ORDER BY seq",
        session_id,
    )
    parts = deployed.gateway.query(
        "SELECT data FROM audio_parts WHERE session_id = ? ORDER BY audio_id, part", session_id
    )
    return [bytes(row[0]) for row in sealed], [bytes(row[0]) for row in parts]


def plain_audio_files(state_dir: Path) -> list[Path]:
    return [p for p in state_dir.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"fLaC"]


def test_a_chunk_is_in_the_store_before_the_200_and_survives_sigkill(linked: Deployment) -> None:
    session_id = session_in(linked, "room-2")
    chunk = linked.seal("room-2", session_id, 0, tone(2.0))
    assert linked.put_chunk("room-2", session_id, chunk).status_code == 200
    linked.gateway.kill()  # right after the answer: nothing is flushed later
    assert stored_audio(linked, session_id) == ([chunk.blob], [])
    linked.gateway.start()
    again = linked.put_chunk("room-2", session_id, chunk)
    assert (again.status_code, again.json()["duplicate"]) == (200, True)
    changed = linked.seal("room-2", session_id, 0, tone(2.0, hz=500))
    assert linked.put_chunk("room-2", session_id, changed).status_code == 409
    stop(linked, session_id)
    assert linked.close("room-2", session_id, [chunk]).status_code == 200
    linked.gateway.wait_for_state(session_id, "notes_ready")


def test_a_session_is_assembled_uploaded_once_and_its_audio_deleted(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    session_id = session_in(linked, "room-3")
    chunks = [
        linked.seal("room-3", session_id, seq, tone(0.5 + seq * 0.37, seed=seq), 3.0 * seq)
        for seq in range(6)
    ]
    for chunk in reversed(chunks):  # order of arrival does not matter
        assert linked.put_chunk("room-3", session_id, chunk).status_code == 200
    stop(linked, session_id)
    # The manifest comes twice (a device whose first answer was lost): answered alike.
    closed = linked.close("room-3", session_id, chunks)
    assert closed.json() == {
        "session_id": session_id, "complete": True, "missing": [], "state": "assembling",
    }  # fmt: skip
    repeated = linked.close("room-3", session_id, chunks).json()
    assert repeated["complete"] and repeated["state"] in ("assembling", "assembled")
    done = linked.gateway.wait_for_state(session_id, "notes_ready")
    expected_s = sum(chunk.duration_s for chunk in chunks)
    at_blueprint = next(
        s for s in sim.state()["session_details"].values()
        if s["session_external_id"] == session_id
    )  # fmt: skip
    assert at_blueprint["audio_duration_s"] == pytest.approx(expected_s, abs=1e-3)
    assert sim.state()["audio_uploads"] == 1
    assert done["audio"] == {
        "chunks_received": 6, "speech_s": round(expected_s, 3), "manifest_chunks": 6,
        "state": "assembled", "paused": [],
    }  # fmt: skip
    timeline = steps(done)
    for step in ("first_chunk_received", "audio_closed", "audio_ready", "audio_uploaded"):
        assert step in timeline
    assert timeline.index("audio_closed") < timeline.index("audio_ready")
    # Retention 0: deleted once Blueprint accepted the audio.
    eventually(
        lambda: "audio_deleted" in steps(linked.gateway.session(session_id)),
        timeout=10,
        what="audio not deleted",
    )
    assert stored_audio(linked, session_id) == ([], [])
    assert not plain_audio_files(linked.gateway.state_dir)
    # A repeat after deletion is still recognised.
    assert linked.put_chunk("room-3", session_id, chunks[2]).json()["duplicate"]


def test_a_manifest_before_its_last_chunk_waits_for_it(linked: Deployment) -> None:
    session_id = session_in(linked, "room-1")
    chunks = [linked.seal("room-1", session_id, seq, tone(1.0, seed=seq)) for seq in range(3)]
    for chunk in chunks[:2]:
        assert linked.put_chunk("room-1", session_id, chunk).status_code == 200
    stop(linked, session_id)
    waiting = linked.close("room-1", session_id, chunks).json()
    assert (waiting["complete"], waiting["missing"], waiting["state"]) == (
        False, [2], "waiting_for_chunks",
    )  # fmt: skip
    assert linked.gateway.session(session_id)["state"] == "stopping"
    assert linked.put_chunk("room-1", session_id, chunks[2]).status_code == 200
    linked.gateway.wait_for_state(session_id, "notes_ready")
    # A manifest that disagrees with a stored chunk is refused.
    other = session_in(linked, "room-1")
    stored = linked.seal("room-1", other, 0, tone(1.0))
    assert linked.put_chunk("room-1", other, stored).status_code == 200
    lying = linked.seal("room-1", other, 0, tone(1.0, hz=900))
    assert linked.close("room-1", other, [lying]).status_code == 409
    stop(linked, other)
    assert linked.close("room-1", other, [stored]).status_code == 200
    linked.gateway.wait_for_state(other, "notes_ready")


def test_a_session_no_partner_started_is_kept_but_not_uploaded(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    chunks = [linked.seal("room-2", "recorded-by-hand", seq, tone(1.0)) for seq in range(2)]
    for chunk in chunks:
        assert linked.put_chunk("room-2", "recorded-by-hand", chunk).status_code == 200
    assert linked.close("room-2", "recorded-by-hand", chunks).json()["complete"]
    eventually(
        lambda: "assembled" in linked.gateway.cli("device", "unclaimed", "room-2").stdout,
        timeout=10,
        what="not assembled",
    )
    sealed, parts = stored_audio(linked, "recorded-by-hand")
    assert sealed == [chunk.blob for chunk in chunks] and parts  # kept, encrypted
    assert not any(b"fLaC" in part for part in parts), "no plain FLAC in the database"
    assert not plain_audio_files(linked.gateway.state_dir), "nor on disk"
    assert sim.state()["audio_uploads"] == 0
    export = linked.gateway.state_dir.parent / "exported"
    listed = linked.gateway.cli("device", "unclaimed", "room-2", "--export", str(export)).stdout
    kept = export / "recorded-by-hand.flac"
    assert listed.startswith("recorded-by-hand  room-2  assembled") and str(kept) in listed
    assert decode(kept.read_bytes()).duration_s == pytest.approx(2.0)
    # Another device cannot add to it.
    intruder = linked.seal("room-3", "recorded-by-hand", 2, tone(1.0))
    assert linked.put_chunk("room-3", "recorded-by-hand", intruder).status_code == 403


def test_a_session_without_speech_fails_with_a_reason(linked: Deployment) -> None:
    session_id = session_in(linked, "room-2")
    stop(linked, session_id)
    assert linked.close("room-2", session_id, []).json()["complete"]
    failed = linked.gateway.wait_for_state(session_id, "failed")
    assert failed["error"] == "no speech was recorded"


def test_a_revoked_device_is_refused_at_ingest_at_once(linked: Deployment) -> None:
    session_id = session_in(linked, "room-3")
    chunk = linked.seal("room-3", session_id, 0, tone(1.0))
    assert linked.put_chunk("room-3", session_id, chunk).status_code == 200
    linked.gateway.cli("device", "revoke", "room-3")  # the service keeps running
    again = linked.seal("room-3", session_id, 1, tone(1.0))
    refused = linked.put_chunk("room-3", session_id, again)
    assert "revoked" in assert_problem(refused, 403, "device_revoked")["detail"]
    linked.devices["room-3"] = linked.add_device("room-3", "--rotate")
    assert linked.put_chunk("room-3", session_id, again).status_code == 200
    stop(linked, session_id)
    assert linked.close("room-3", session_id, [chunk, again]).status_code == 200
    linked.gateway.wait_for_state(session_id, "notes_ready")


# --- assembly itself, in process ------------------------------------------------------------


@pytest.mark.parametrize("codec", ["flac", "opus"])
def test_assembly_concatenates_the_chunks_in_order(
    tmp_path: Path, deployed: Deployment, codec: str
) -> None:
    db = Database.open(SqliteLocation(tmp_path / "gateway.db"))
    chunks = [deployed.seal("room-1", "ses_x", seq, tone(0.7, seed=seq)) for seq in range(4)]

    def store(conn: Connection) -> None:
        records.create_session(conn, "ses_x", "room-1", claimed=True)
        for c in chunks:
            stored = records.StoredChunk(c.seq, c.sha256, len(c.blob), 0.0, 0.7, "", 0.0)
            records.insert_chunk(conn, "ses_x", stored, c.blob)

    db.call(store)
    manifest = SessionManifest(
        device_id="room-1", session_id="ses_x", chunks=[c.listed() for c in chunks]
    )
    session = records.IngestSession(
        "ses_x", "room-1", True, "assembling", manifest, 0.0, None, None, 0.0
    )
    plan = _Plan(session, [(c.seq, "") for c in chunks])
    vault = open_vault(db, tmp_path / "audio-key")
    assembler = Assembler(
        db,
        ChunkFiles(tmp_path / "chunks"),
        SealingKeys(deployed.gateway.state_dir / "sealing-key.pem"),
        SessionLifecycle(JobSettings(), "bpenv_test"),
        IngestSettings(codec=codec),
        vault,
        10**8,
    )
    assembled = assembler.build(plan)

    async def read() -> bytes:
        return b"".join([part async for part in vault.read(assembled.ref)])

    audio = decode(asyncio.run(read()))
    db.close()
    expected = np.concatenate([chunk.pcm for chunk in chunks])
    assert assembled.duration_s == pytest.approx(len(expected) / 16_000)
    if codec == "flac":
        assert assembled.content_type == "audio/flac"
        assert np.array_equal(audio.pcm, expected), "lossless and in seq order"
    else:
        assert assembled.content_type == "audio/ogg"
        assert audio.duration_s == pytest.approx(len(expected) / 16_000, abs=0.05)


def test_a_cancelled_session_s_audio_is_discarded_and_never_uploaded(
    linked: Deployment, sim: SimulatorProcess
) -> None:
    session_id = session_in(linked, "room-2")
    chunks = [linked.seal("room-2", session_id, seq, tone(0.5, seed=seq)) for seq in range(3)]
    assert linked.put_chunk("room-2", session_id, chunks[0]).status_code == 200
    cancelled = linked.gateway.http.post(f"/v1/sessions/{session_id}/cancel")
    assert cancelled.json()["state"] == "cancelled"
    # The device keeps sending what it spooled: taken (so it may delete it), not kept.
    for chunk in chunks[1:]:
        answer = linked.put_chunk("room-2", session_id, chunk)
        assert answer.status_code == 200, answer.text
    closed = linked.close("room-2", session_id, chunks)
    assert closed.status_code == 200 and closed.json()["complete"], closed.text
    eventually(
        lambda: stored_audio(linked, session_id) == ([], []),
        timeout=10,
        what="the cancelled session's chunks were kept",
    )
    done = linked.gateway.session(session_id)
    assert done["state"] == "cancelled" and "audio_uploaded" not in steps(done)
    assert sim.state()["audio_uploads"] == 0


def test_each_device_can_learn_the_gateway_s_key_fingerprint(linked: Deployment) -> None:
    """What a device compares its gateway_public_key with before it records; only with
    its own token."""
    path = sealing_key_path("room-1")
    http = linked.gateway.http
    own = {"Authorization": f"Bearer {linked.devices['room-1'].token}"}
    answer = httpx.get(f"{linked.gateway.url}{path}", headers=own)
    assert answer.status_code == 200, answer.text
    info = SealingKeyInfo.model_validate_json(answer.content)
    public = linked.key.public_key()
    assert info == SealingKeyInfo(
        fingerprint=key_fingerprint(public), public_key=public_key_to_text(public)
    )
    assert_problem(httpx.get(f"{linked.gateway.url}{path}"), 401, "missing_token")
    other = {"Authorization": f"Bearer {linked.devices['room-2'].token}"}
    assert_problem(httpx.get(f"{linked.gateway.url}{path}", headers=other), 403, "device_forbidden")
    # A partner token is no device's.
    assert http.get(path).status_code == 401
