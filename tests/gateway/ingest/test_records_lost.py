"""A device that lost its spool before a restart (issue 10): it resumes the session past
every seq it may have used and its manifest lists only what it recorded since, saying
``records_lost_below``. The gateway keeps the chunks it holds below that seq as they are:
every word the device delivered before the loss is in the session's audio, and the
timeline says what happened. A real `room-gateway serve`, the simulator over HTTP.
"""

from __future__ import annotations

import httpx
import pytest

from protocol.ingest import close_path
from protocol.manifest import SessionManifest
from tests.gateway.conftest import SimulatorProcess
from tests.gateway.deployment import Deployment, tone

pytestmark = pytest.mark.timeout(120)
ROOM = "room-1"


@pytest.fixture
def deployed(tmp_path, blueprint_sim: SimulatorProcess, sim: SimulatorProcess):
    deployment = Deployment(tmp_path / "gw", blueprint_sim.url, (ROOM,)).start()
    sim.set_callback(deployment.gateway.webhook_url)
    deployment.people = ("clin-records-lost", "client-records-lost")
    deployment.gateway.put_people(*deployment.people)
    yield deployment
    deployment.stop()


def test_chunks_held_below_records_lost_below_are_kept(
    deployed: Deployment, sim: SimulatorProcess
) -> None:
    session_id = deployed.gateway.start_session(ROOM, *deployed.people)
    before = [deployed.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq) for seq in (0, 1)]
    after = [
        deployed.seal(ROOM, session_id, seq, tone(1.0, seed=seq), seq - 62) for seq in (64, 65)
    ]
    for chunk in before + after:
        assert deployed.put_chunk(ROOM, session_id, chunk).status_code == 200
    assert deployed.gateway.http.post(f"/v1/sessions/{session_id}/stop").status_code == 200
    manifest = SessionManifest(
        device_id=ROOM,
        session_id=session_id,
        chunks=[chunk.listed() for chunk in after],
        records_lost_below=64,
    )
    answer = httpx.post(
        deployed.gateway.url + close_path(ROOM, session_id),
        content=manifest.model_dump_json(),
        headers={
            "Authorization": f"Bearer {deployed.devices[ROOM].token}",
            "Content-Type": "application/json",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    done = deployed.gateway.wait_for_state(session_id, "notes_ready")
    assert done["audio"]["manifest_chunks"] == 4
    steps = [e for e in done["timeline"] if e["step"] == "device_records_lost"]
    assert len(steps) == 1 and "below 64" in steps[0]["detail"], done["timeline"]
    uploaded = next(
        s for s in sim.state()["session_details"].values()
        if s["session_external_id"] == session_id
    )  # fmt: skip
    assert uploaded["audio_duration_s"] == pytest.approx(4.0, abs=1e-3)


def test_a_listed_chunk_below_records_lost_below_is_refused() -> None:
    with pytest.raises(ValueError, match="below records_lost_below"):
        SessionManifest.model_validate(
            {
                "device_id": ROOM,
                "session_id": "s-1",
                "records_lost_below": 64,
                "chunks": [
                    {"seq": 3, "sha256": "0" * 64, "bytes": 10, "start_s": 0, "duration_s": 1}
                ],
            }
        )
