"""BlueprintClient against the simulator running as a real server."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from gateway.blueprint.client import (
    BlueprintRejected,
    BlueprintUnavailable,
    reuse_window_s,
)
from gateway.blueprint.defaults import (
    DEFAULT_API_KEY,
    DEFAULT_CLIENT_SECRET,
)
from tests.support.processes import free_port

from .conftest import make_client, start_simulator

pytestmark = pytest.mark.anyio

# Simulator tokens are 43 URL-safe characters; Blueprint ids are 36-character UUIDs.
TOKEN_LIKE = re.compile(r"[A-Za-z0-9_-]{40,}")


class CallLog(list):
    """on_call sink, as the gateway's metrics would be."""

    def __call__(self, operation: str, status: int) -> None:
        self.append((operation, status))


async def ensure_people(client, suffix: str = "1") -> tuple[str, str]:
    clinician = await client.ensure_clinician(f"clin-{suffix}", "Ada", "Byron", None)
    person = await client.ensure_client(f"cli-{suffix}", "Grace", "Hopper", clinician)
    return clinician, person


# --- token ------------------------------------------------------------------------------------


def test_token_reuse_window() -> None:
    assert reuse_window_s(3600) == 3540
    assert reuse_window_s(61) == 1
    assert reuse_window_s(30) == 15  # shorter than the margin: refresh at half-life


async def test_token_cached_until_60_s_before_expiry(sim) -> None:
    sim.faults(token_lifetime_s=61)  # the token may be reused for 1 s
    async with sim.client() as client:
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
        assert sim.state()["tokens_issued"] == 1
        await asyncio.sleep(1.1)
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert sim.state()["tokens_issued"] == 2


async def test_token_refreshed_once_on_401(sim) -> None:
    async with sim.client() as client:
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
        sim.faults(expire_tokens=True)
        assert await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    state = sim.state()
    assert state["tokens_issued"] == 2
    assert state["calls"]["GET /clinicians"] == {"200": 2, "401": 1}


async def test_401_after_a_fresh_token_is_not_retried_forever(sim) -> None:
    sim.faults(token_lifetime_s=0.001)  # every token is dead on arrival
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        with pytest.raises(BlueprintRejected) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert caught.value.status == 401
    assert sim.state()["tokens_issued"] == 2
    assert calls == [
        ("authenticate", 200),
        ("find_clinician", 401),
        ("authenticate", 200),
        ("find_clinician", 401),
    ]


async def test_one_token_fetch_under_concurrency(sim) -> None:
    sim.faults(latency_ms=50)  # every call is in flight while the token is being fetched
    async with sim.client() as client:
        ids = await asyncio.gather(
            *(client.ensure_clinician(f"clin-{n}", "Ada", "Byron", None) for n in range(20))
        )
    state = sim.state()
    assert state["tokens_issued"] == 1
    assert len(set(ids)) == 20 and state["clinicians"] == 20


async def test_bad_credentials_are_rejected_not_retried(sim) -> None:
    calls = CallLog()
    async with make_client(sim.url, client_id="someone-else", on_call=calls) as client:
        with pytest.raises(BlueprintRejected) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert caught.value.status == 401
    assert calls == [("authenticate", 401)]


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_retries_transient_statuses(sim, status: int) -> None:
    sim.faults(fail_next=2, fail_status=status)
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert calls[:3] == [("authenticate", status), ("authenticate", status), ("authenticate", 200)]
    assert sim.state()["clinicians"] == 1


async def test_429_honours_retry_after(sim) -> None:
    sim.faults(throttle_next=1, retry_after_s=1)
    calls = CallLog()
    async with sim.client(on_call=calls, backoff_base_s=0.01, backoff_max_s=5) as client:
        started = time.monotonic()
        await client.ensure_clinician("clin-1", "Ada", "Byron", None)
        elapsed = time.monotonic() - started
    assert calls[:2] == [("authenticate", 429), ("authenticate", 200)]
    assert 1.0 <= elapsed < 2.0


async def test_retry_after_beyond_backoff_max_is_left_to_the_caller(sim) -> None:
    sim.faults(throttle_next=5, retry_after_s=60)
    calls = CallLog()
    async with sim.client(on_call=calls, backoff_max_s=2) as client:
        with pytest.raises(BlueprintUnavailable) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert (caught.value.status, caught.value.retry_after_s) == (429, 60)
    assert calls == [("authenticate", 429)]


@pytest.mark.parametrize("status", [400, 404, 409, 422])
async def test_no_retry_on_other_4xx(sim, status: int) -> None:
    sim.faults(fail_next=1, fail_status=status)
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        with pytest.raises(BlueprintRejected) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert caught.value.status == status
    assert calls == [("authenticate", status)]


async def test_unavailable_when_retries_run_out(sim) -> None:
    sim.faults(fail_next=10, fail_status=503)
    calls = CallLog()
    async with sim.client(on_call=calls, max_attempts=3) as client:
        with pytest.raises(BlueprintUnavailable) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert caught.value.status == 503
    assert "3 attempts" in str(caught.value)
    assert calls == [("authenticate", 503)] * 3


async def test_connect_errors_are_retried_then_unavailable() -> None:
    calls = CallLog()
    closed = f"http://127.0.0.1:{free_port()}"
    async with make_client(closed, on_call=calls, max_attempts=3) as client:
        with pytest.raises(BlueprintUnavailable) as caught:
            await client.ensure_clinician("clin-1", "Ada", "Byron", None)
    assert caught.value.status == 0
    assert calls == [("authenticate", 0)] * 3


async def test_waits_for_a_server_that_is_not_up_yet(tmp_path: Path) -> None:
    port = free_port()
    calls = CallLog()
    client = make_client(
        f"http://127.0.0.1:{port}",
        on_call=calls,
        max_attempts=100,
        backoff_base_s=0.05,
        backoff_max_s=0.2,
    )
    async with client:
        call = asyncio.create_task(client.ensure_clinician("clin-1", "Ada", "Byron", None))
        await asyncio.sleep(0.3)
        assert not call.done()
        service = start_simulator(port, tmp_path / "late-simulator.log")
        try:
            assert await asyncio.wait_for(call, timeout=20)
        finally:
            service.stop()
    assert calls.count(("authenticate", 0)) >= 2
    assert ("authenticate", 200) in calls


async def test_backoff_is_exponential_with_jitter(caplog: pytest.LogCaptureFixture) -> None:
    base = 0.05
    closed = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="gateway.blueprint.client")
    async with make_client(closed, max_attempts=5, backoff_base_s=base, backoff_max_s=10) as c:
        with pytest.raises(BlueprintUnavailable):
            await c.ensure_clinician("clin-1", "Ada", "Byron", None)
    waits = [float(m) for m in re.findall(r"retrying in ([0-9.]+) s", caplog.text)]
    assert len(waits) == 4
    floors = [base * 2**n for n in range(4)]  # 0.05, 0.1, 0.2, 0.4
    for wait, floor in zip(waits, floors, strict=True):
        assert floor - 0.005 <= wait <= floor + base + 0.005
    assert any(wait > floor + 0.005 for wait, floor in zip(waits, floors, strict=True))


# --- ensure -----------------------------------------------------------------------------------


async def test_ensure_looks_up_before_creating(sim) -> None:
    async with sim.client() as client:
        first = await ensure_people(client)
        session_1 = await client.ensure_session("sess-1", *first)
        again = await ensure_people(client)
        session_2 = await client.ensure_session("sess-1", *again)
    assert first == again and session_1 == session_2
    state = sim.state()
    assert (state["clinicians"], state["clients"], state["sessions"]) == (1, 1, 1)
    for route in ("POST /clinicians", "POST /clients", "POST /sessions"):
        assert state["calls"][route] == {"201": 1}


async def test_concurrent_ensure_creates_one_record(sim) -> None:
    sim.faults(latency_ms=30)  # let every lookup miss before any create lands
    async with sim.client() as client:
        await client.ensure_clinician("warm-up", "Ada", "Byron", None)  # token first
        ids = await asyncio.gather(
            *(client.ensure_clinician("clin-1", "Ada", "Byron", "a@b.c") for _ in range(10))
        )
    assert len(set(ids)) == 1
    state = sim.state()
    assert state["clinicians"] == 2
    creates = state["calls"]["POST /clinicians"]
    assert creates["201"] == 2 and creates.get("409", 0) >= 1  # the 409 path was taken


async def test_ensure_session_passes_setting_and_note_options(sim) -> None:
    async with sim.client() as client:
        clinician, person = await ensure_people(client)
        session_id = await client.ensure_session(
            "sess-1", clinician, person, "telehealth", {"noteType": "dap", "sessionType": "couple"}
        )
    response = httpx.get(
        f"{sim.url}/sessions", params={"sessionExternalId": "sess-1"}, headers=sim.headers()
    )
    (record,) = response.json()["items"]
    assert record["id"] == session_id
    assert record["sessionSetting"] == "telehealth"
    assert record["noteOptions"]["noteType"] == "dap"
    assert record["noteOptions"]["sessionType"] == "couple"


async def test_invalid_fields_are_named_without_their_values(sim) -> None:
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        with pytest.raises(BlueprintRejected) as caught:
            await client.ensure_clinician("clin-1", "", "Quixote-Zelda", None)
        with pytest.raises(BlueprintRejected):
            await client.ensure_session("s", "c", "k", "on-the-moon")
    assert "first_name" in str(caught.value) and "Quixote" not in str(caught.value)
    assert calls == []


# --- audio and artifacts ----------------------------------------------------------------------


async def make_session(client, external_id: str = "sess-1") -> str:
    clinician, person = await ensure_people(client)
    return await client.ensure_session(external_id, clinician, person)


@pytest.mark.parametrize(
    ("fmt", "subtype", "content_type", "codec"),
    [("FLAC", None, "audio/flac", "flac"), ("OGG", "OPUS", "audio/ogg", "opus")],
)
async def test_upload_audio_reaches_blueprint_whole(
    sim, make_audio, fmt: str, subtype: str | None, content_type: str, codec: str
) -> None:
    audio = make_audio(2.5, fmt, subtype)
    async with sim.client() as client:
        session_id = await make_session(client)
        await client.upload_audio(session_id, audio, content_type)
    details = sim.state()["session_details"][session_id]
    assert details["codec"] == codec
    assert details["audio_bytes"] == audio.stat().st_size
    assert details["audio_duration_s"] == pytest.approx(2.5, abs=1e-3)


async def test_upload_streams_rather_than_buffering(sim, tmp_path: Path) -> None:
    """A 32 MB file goes out without 32 MB ever being held in memory by the client."""
    big = tmp_path / "big.flac"
    with big.open("wb") as file:
        for _ in range(32):
            file.write(os.urandom(1024 * 1024))
    async with sim.client(timeout_s=30) as client:
        session_id = await make_session(client)
        tracemalloc.start()
        try:
            with pytest.raises(BlueprintRejected) as caught:  # random bytes are not FLAC
                await client.upload_audio(session_id, big, "audio/flac")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert caught.value.status == 422  # the simulator received all of it and decoded it
    assert peak < 8 * 1024 * 1024


async def test_upload_repeated_after_success_is_not_an_error(sim, make_audio) -> None:
    audio = make_audio(1.0)
    async with sim.client() as client:
        session_id = await make_session(client)
        await client.upload_audio(session_id, audio, "audio/flac")
        await client.upload_audio(session_id, audio, "audio/flac")
    state = sim.state()
    assert state["audio_uploads"] == 1
    assert state["calls"]["PUT /sessions/{session_id}/audio"] == {"202": 1, "409": 1}


async def test_upload_retried_after_5xx_streams_the_file_again(sim, make_audio) -> None:
    audio = make_audio(1.5)
    async with sim.client() as client:
        session_id = await make_session(client)
        sim.faults(fail_next=1, fail_status=503)
        await client.upload_audio(session_id, audio, "audio/flac")
    details = sim.state()["session_details"][session_id]
    assert details["audio_bytes"] == audio.stat().st_size
    assert details["audio_duration_s"] == pytest.approx(1.5, abs=1e-3)


async def test_upload_rejections_are_not_retried(sim, tmp_path: Path) -> None:
    empty = tmp_path / "empty.flac"
    empty.write_bytes(b"")
    text = tmp_path / "notes.flac"
    text.write_bytes(b"this is not audio at all\n" * 100)
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        session_id = await make_session(client)
        for path, content_type, status in [
            (empty, "audio/flac", 400),
            (text, "audio/flac", 422),
            (text, "text/plain", 415),
        ]:
            with pytest.raises(BlueprintRejected) as caught:
                await client.upload_audio(session_id, path, content_type)
            assert caught.value.status == status
        with pytest.raises(BlueprintRejected) as caught:
            await client.upload_audio("no-such-session", text, "audio/flac")
        assert caught.value.status == 404
    uploads = [status for operation, status in calls if operation == "upload_audio"]
    assert uploads == [400, 422, 415, 404]


async def test_get_artifact_refuses_foreign_hosts(sim) -> None:
    calls = CallLog()
    async with sim.client(on_call=calls) as client:
        for url in ("http://attacker.example/progress-notes/1", "/progress-notes/1"):
            with pytest.raises(BlueprintRejected):
                await client.get_artifact(url)
    assert calls == []


async def test_get_artifact_of_unknown_note_is_rejected(sim) -> None:
    async with sim.client() as client:
        with pytest.raises(BlueprintRejected) as caught:
            await client.get_artifact(f"{sim.url}/progress-notes/does-not-exist")
    assert caught.value.status == 404


# --- secrets and PHI --------------------------------------------------------------------------


async def test_no_secret_or_name_in_logs_or_errors(
    sim, make_audio, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # everything: ours, httpx, httpcore
    errors: list[str] = []
    async with sim.client(max_attempts=2) as client:
        clinician = await client.ensure_clinician("clin-9", "Zelda", "Quixote", "zq@example.org")
        person = await client.ensure_client("cli-9", "Yorick", "Xanthippe", clinician)
        session_id = await client.ensure_session("sess-9", clinician, person)
        sim.faults(expire_tokens=True, fail_next=1, fail_status=503)
        await client.upload_audio(session_id, make_audio(1.0), "audio/flac")
        sim.faults(fail_next=5, fail_status=500)
        for call in (
            client.ensure_client("cli-10", "Yorick", "Xanthippe", clinician),
            client.ensure_clinician("clin-10", "", "Quixote", None),
        ):
            try:
                await call
            except BlueprintRejected as exc:
                errors.append(repr(exc) + str(exc))
            except BlueprintUnavailable as exc:
                errors.append(repr(exc) + str(exc))
    assert len(errors) == 2
    text = caplog.text + "\n".join(errors) + sim.log()
    # the logs were captured: ours, httpx's, and the simulator's access log
    assert "retrying in" in text and "HTTP Request" in text and "PUT /sessions/" in text
    for forbidden in (DEFAULT_API_KEY, DEFAULT_CLIENT_SECRET, "Zelda", "Quixote", "Yorick"):
        assert forbidden not in text
    assert not TOKEN_LIKE.search(text)
