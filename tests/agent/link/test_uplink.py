"""The uplink over real HTTP: a real spool on disk, a real uvicorn ingest server on a loopback
port (tests/support/ingest_server.py, the protocol/ingest.py contract), real faults.

What must hold whatever the gateway does: a chunk leaves the spool only after a 2xx for
exactly its bytes; nothing is lost through 5xx storms, outages and refused tokens; what
the gateway will not take (409, 422) is never deleted and is reported.
"""

import hashlib
import threading
import time
import zlib

import numpy as np
import pytest
from pydantic import SecretStr

from agent.link.device_status import DeviceStatus
from agent.link.uplink import Uplink, make_client
from agent.pipeline.audio import AudioSource
from agent.pipeline.filesource import FileSource
from agent.pipeline.recorder import Recorder, RecorderListener
from agent.pipeline.seal import ChunkSealer
from agent.settings import AgentSettings, LinkSettings
from agent.spool import Spool
from protocol.envelope import generate_private_key, public_key_to_text
from protocol.messages import ChunkRefusal, DeviceState
from tests.support.certs import Pki
from tests.support.eventually import eventually
from tests.support.ingest_server import IngestServer
from tests.support.speech import make_session
from tests.support.wakeups import voluntary_switches

KEY = generate_private_key()
DEVICE = "room-7"
TOKEN = "ingest-token-room-7"
GIB = 1024**3


def link(server: IngestServer, **overrides) -> LinkSettings:
    values = dict(
        gateway_url=server.url,
        ingest_token=TOKEN,
        upload_concurrency=4,
        timeout_s=5.0,
        backoff_base_s=0.05,
        backoff_max_s=0.4,
    )
    return LinkSettings(**(values | overrides))


def start_uplink(settings: LinkSettings, spool: Spool) -> Uplink:
    uplink = Uplink(settings, DEVICE, spool, make_client(settings, SecretStr(TOKEN)))
    uplink.start()
    return uplink


def spool_session(
    spool: Spool, session_id: str, chunks: int, close: bool = True, recipient=None
) -> list[bytes]:
    """A session of ``chunks`` sealed 2 s chunks of low noise; returns the sealed bytes."""
    sealer = ChunkSealer(DEVICE, (recipient or KEY).public_key())
    rng = np.random.default_rng(zlib.crc32(session_id.encode()))  # the same in every run
    spool.create_session(session_id, DEVICE)
    sealed = []
    for seq in range(chunks):
        pcm = rng.normal(0, 200, 32_000).astype(np.int16)
        blob = sealer.seal(session_id, seq, seq * 2.0, pcm)
        spool.append(blob)
        sealed.append(blob)
    if close:
        spool.close_session(session_id, "stopped")
    return sealed


def chunk_files(spool: Spool, session_id: str) -> list[int]:
    return sorted(
        int(p.name[:8]) for p in (spool.directory / "sessions" / session_id).glob("*.chunk")
    )


@pytest.fixture
def server():
    with IngestServer(KEY, {DEVICE: TOKEN}) as running:
        yield running


@pytest.fixture
def spool(tmp_path):
    with Spool(tmp_path / "spool", GIB, 0) as opened:
        yield opened


def delivered(server: IngestServer, session_id: str) -> bool:
    return server.manifest(session_id) is not None


def test_drains_oldest_first_then_manifest_then_forgets(server, spool):
    first = spool_session(spool, "session-a", 4)
    second = spool_session(spool, "session-b", 3)
    uplink = start_uplink(link(server, upload_concurrency=1), spool)
    try:
        server.wait_until(lambda: delivered(server, "session-a") and delivered(server, "session-b"))
        eventually(lambda: not spool.sessions(), timeout=5, what="the spool emptied")
    finally:
        uplink.stop()
    order = [(r.method, r.session_id, r.seq) for r in server.requests()]
    assert order == [
        *[("PUT", "session-a", seq) for seq in range(4)],
        ("POST", "session-a", None),
        *[("PUT", "session-b", seq) for seq in range(3)],
        ("POST", "session-b", None),
    ]
    assert all(r.status == 200 for r in server.requests())
    for session_id, sealed in (("session-a", first), ("session-b", second)):
        stored = server.chunks(session_id)
        assert [stored[(session_id, seq)].sealed for seq in range(len(sealed))] == sealed
        manifest = server.manifest(session_id)
        assert [c.sha256 for c in manifest.chunks] == [
            hashlib.sha256(blob).hexdigest() for blob in sealed
        ]
    assert spool.sessions() == [], "delivered sessions are forgotten"
    assert not list((spool.directory / "sessions").iterdir())
    status = uplink.status()
    assert (status.chunks_sent, status.sessions_delivered, status.reason) == (7, 2, None)


def test_5xx_storm_and_outage_lose_nothing(server, spool):
    sealed = spool_session(spool, "storm", 6)
    server.answer_all(503)
    uplink = start_uplink(link(server), spool)
    try:
        server.wait_until(lambda: len(server.state.requests) >= 12)
        assert chunk_files(spool, "storm") == list(range(6)), "nothing deleted without a 2xx"
        assert uplink.status().reason == "gateway_error"
        assert uplink.status().failures > 0

        server.stop()  # connections refused now
        server.answer_all(None)
        time.sleep(0.5)
        assert chunk_files(spool, "storm") == list(range(6))
        assert uplink.status().reason == "gateway_unreachable"

        server.start()
        server.fail_next(3)  # and a few more 5xx as it comes back
        server.wait_until(lambda: delivered(server, "storm"), timeout=10)
    finally:
        uplink.stop()
    stored = server.chunks("storm")
    assert [stored[("storm", seq)].sealed for seq in range(6)] == sealed
    assert spool.sessions() == []
    assert uplink.status().reason is None and uplink.status().failures == 0
    statuses = {r.status for r in server.requests()}
    assert {503, 200} <= statuses


def test_refused_token_keeps_everything_and_retries_slowly(server, spool):
    spool_session(spool, "locked", 3)
    server.answer_all(401)
    uplink = start_uplink(link(server, backoff_max_s=1.0), spool)
    try:
        time.sleep(2.2)
        refused = len(server.requests())
        # 3 workers with work, one try each at once and then one per second at most.
        assert 3 <= refused <= 3 * 4, refused
        assert uplink.status().reason == "unauthorized"
        assert chunk_files(spool, "locked") == [0, 1, 2]
        server.answer_all(None)
        server.wait_until(lambda: delivered(server, "locked"), timeout=5)
    finally:
        uplink.stop()
    assert spool.sessions() == []


def test_wrong_token_is_refused_by_the_server(server, spool):
    spool_session(spool, "wrong-token", 1)
    settings = link(server)
    uplink = Uplink(settings, DEVICE, spool, make_client(settings, SecretStr("not-the-token")))
    uplink.start()
    try:
        server.wait_until(lambda: any(r.status == 401 for r in server.state.requests))
        time.sleep(0.1)
        assert uplink.status().reason == "unauthorized"
        assert chunk_files(spool, "wrong-token") == [0]
    finally:
        uplink.stop()


@pytest.mark.parametrize(
    ("proxy", "reason", "code"),
    [(False, "device_revoked", "device_revoked"), (True, "not_the_gateway", "http_403")],
    ids=["the-gateway-revoked-it", "a-proxy-refuses"],
)
def test_a_403_is_a_revocation_only_when_the_gateway_says_so(server, spool, proxy, reason, code):
    spool_session(spool, "behind-proxy", 1)
    server.answer_all(403, proxy=proxy)
    uplink = start_uplink(link(server), spool)
    try:
        server.wait_until(lambda: any(r.status == 403 for r in server.state.requests))
        status = eventually(
            lambda: (s := uplink.status()).reason is not None and s, timeout=5, what="a reason"
        )
    finally:
        uplink.stop()
    assert status.reason == reason
    assert status.refused == ChunkRefusal(session_id="behind-proxy", seq=0, status=403, code=code)
    assert chunk_files(spool, "behind-proxy") == [0], "kept"


def no_microphone() -> AudioSource:
    raise AssertionError("the recorder is never started here")


def device_state(tmp_path, spool: Spool, uplink: Uplink) -> DeviceState:
    """The retained MQTT state the device would publish now."""
    settings = AgentSettings(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        gateway_public_key=public_key_to_text(KEY.public_key()),
    )
    recorder = Recorder(settings, spool, no_microphone)  # never started
    return DeviceStatus(DEVICE, recorder, spool, uplink).state()


def test_conflict_is_kept_and_reported_never_deleted(tmp_path, server, spool):
    spool_session(spool, "conflicted", 3)
    # The gateway already holds a different chunk 1 for this session.
    other = ChunkSealer(DEVICE, KEY.public_key()).seal(
        "conflicted", 1, 2.0, np.full(16_000, 7, dtype=np.int16)
    )
    server.plant(DEVICE, "conflicted", 1, other)
    uplink = start_uplink(link(server), spool)
    try:
        server.wait_until(lambda: any(r.status == 409 for r in server.state.requests))
        server.wait_until(lambda: len(server.chunks("conflicted")) == 3)
        # Would the uplink retry, delete or close? A session spooled after it is sent once
        # the uplink has passed the conflict: by then it has done whatever it would do.
        # A request that failed meanwhile (a keep-alive connection the server closed
        # under load) shows as gateway_unreachable until a retry succeeds: wait for that.
        spool_session(spool, "sentinel", 1)
        server.wait_until(lambda: server.manifest("sentinel") is not None)
        eventually(lambda: uplink.status().failures == 0, timeout=5, what="retried")
        status = uplink.status()
    finally:
        uplink.stop()
    assert status.reason == "chunk_conflict"
    assert device_state(tmp_path, spool, uplink).reason == "chunk_conflict", "in the MQTT state"
    assert [(p.session_id, p.seq, p.kind, p.status) for p in status.held] == [
        ("conflicted", 1, "conflict", 409)
    ]
    assert chunk_files(spool, "conflicted") == [1], "the refused chunk stays in the spool"
    assert [c.seq for c in spool.pending() if c.session_id == "conflicted"] == [1]
    assert server.manifest("conflicted") is None, "no manifest while a chunk is held"
    assert [r.status for r in server.requests() if r.seq == 1] == [409], "not retried"
    assert server.chunks("conflicted")[("conflicted", 1)].sealed == other


def test_unopenable_chunk_is_quarantined_and_reported(tmp_path, server, spool):
    spool_session(spool, "tampered", 3, close=False)
    # seq 3 is sealed to another key: the gateway cannot open it (422).
    stranger = generate_private_key()
    stray = ChunkSealer(DEVICE, stranger.public_key()).seal(
        "tampered", 3, 6.0, np.full(16_000, 3, dtype=np.int16)
    )
    spool.append(stray)
    spool.close_session("tampered", "stopped")
    uplink = start_uplink(link(server), spool)
    try:
        server.wait_until(lambda: delivered(server, "tampered"))
        status = uplink.status()
    finally:
        uplink.stop()
    assert [(p.seq, p.kind, p.status) for p in status.set_aside] == [(3, "rejected", 422)]
    assert status.reason == "chunk_rejected"
    # The gateway's reason, not only its status, reaches the device.
    wrong_key = ChunkRefusal(session_id="tampered", seq=3, status=422, code="wrong_key")
    assert status.refused == wrong_key
    state = device_state(tmp_path, spool, uplink)
    assert (state.reason, state.quarantined, state.backlog_chunks) == ("chunk_rejected", 1, 0)
    assert state.refused == wrong_key
    assert [c.seq for c in server.manifest("tampered").chunks] == [0, 1, 2]
    quarantined = spool.quarantined()
    assert [(q.session_id, q.reason) for q in quarantined] == [
        ("tampered", "rejected by the gateway (HTTP 422)")
    ]
    assert (spool.directory / quarantined[0].stored).read_bytes() == stray, "kept, not deleted"


class Wake(RecorderListener):
    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def chunk_spooled(self, event) -> None:
        self.uplink.wake()

    def session_closed(self, event, manifest) -> None:
        self.uplink.wake()


class Paced(FileSource):
    """A file at 8x real time: a live session, only shorter."""

    def read(self, timeout=None):
        time.sleep(0.25 / 8)
        return super().read(timeout)


def test_chunks_flow_during_the_session(tmp_path, server):
    speech = make_session(tmp_path / "speech.wav", 40, 20, seed=11)
    settings = AgentSettings(
        device_id=DEVICE,
        state_dir=tmp_path / "state",
        gateway_public_key=public_key_to_text(KEY.public_key()),
        audio={"max_chunk_s": 4.0},
    )
    with Spool(settings.spool_dir, GIB, 0) as spool:
        recorder = Recorder(settings, spool, lambda: Paced(speech.path))
        uplink = start_uplink(link(server), spool)
        recorder.add_listener(Wake(uplink))
        try:
            session = recorder.start("live-session")
            server.wait_until(lambda: len(server.chunks(session)) >= 2, timeout=20)
            assert recorder.state.state == "recording", "chunks arrive during the session"
            time.sleep(1.0)
            stopped_at = time.monotonic()
            recorder.stop(timeout=10)
            server.wait_until(lambda: delivered(server, session), timeout=5)
            complete_s = time.monotonic() - stopped_at
            manifest = server.manifest(session)
            last_chunk_at = max(c.at for c in server.chunks(session).values())
        finally:
            uplink.stop()
        assert len(server.chunks(session)) == len(manifest.chunks) >= 3
        print(
            f"\nstop -> complete audio and manifest at the server: {complete_s * 1000:.0f} ms "
            f"(last chunk {max(0.0, last_chunk_at - stopped_at) * 1000:.0f} ms after stop)"
        )
        assert complete_s < 1.0
        assert spool.sessions() == []


def test_https_with_the_gateways_ca(tmp_path, spool):
    pki = Pki.create(tmp_path / "pki")
    with IngestServer(KEY, {DEVICE: TOKEN}, tls=pki) as server:
        spool_session(spool, "over-tls", 2)
        uplink = start_uplink(link(server, ca_file=pki.ca_cert), spool)
        try:
            server.wait_until(lambda: delivered(server, "over-tls"))
        finally:
            uplink.stop()

        spool_session(spool, "untrusted", 1)  # without the CA: the certificate is refused
        uplink = start_uplink(link(server), spool)
        try:
            time.sleep(0.5)
            assert uplink.status().reason == "gateway_unreachable"
            assert server.chunks("untrusted") == {}
        finally:
            uplink.stop()
    assert [s.session_id for s in spool.sessions()] == ["untrusted"]


def test_a_scan_of_a_busy_spool_never_holds_up_the_recorders_wake(tmp_path, server, spool):
    """The uplink reads the spool outside its condition: while a worker waits for a busy
    spool (a long scan, a slow disk), the recorder's wake() (its thread must never block)
    returns at once, and what was spooled goes out once the spool is free."""
    import threading

    uplink = start_uplink(link(server), spool)
    reached = threading.Event()
    pending = spool.pending

    def pending_seen():
        if threading.current_thread().name.startswith("uplink-"):
            reached.set()
        return pending()

    spool.pending = pending_seen
    try:
        with spool._mutex:  # the spool busy
            uplink.wake()  # a worker scans now, and waits for the spool
            assert reached.wait(5), "no worker read the spool"
            woken = threading.Thread(target=uplink.wake, daemon=True)
            woken.start()
            woken.join(5)
            assert not woken.is_alive(), "wake() waited for the uplink's spool scan"
        spool_session(spool, "after-the-wait", 2)
        server.wait_until(lambda: len(server.chunks("after-the-wait")) == 2)
    finally:
        uplink.stop()


def test_a_spooled_chunk_wakes_one_idle_worker_not_all(server, spool):
    """On a Pi-class core a wake-up costs more than its work: a chunk spooled while the
    workers are idle wakes one of them, which reads the spool once, not every worker
    (each reading the spool, and waking the others again when it is done)."""
    chunks = 8
    uplink = start_uplink(link(server), spool)
    reads: list[str] = []
    for name in ("pending", "sessions"):
        method = getattr(spool, name)

        def counted(method=method, name=name):
            if threading.current_thread().name.startswith("uplink-"):
                reads.append(name)
            return method()

        setattr(spool, name, counted)
    workers = [t for t in threading.enumerate() if t.name.startswith("uplink-")]
    try:
        spool_session(spool, "warm-up", 1, close=False)
        uplink.wake()
        server.wait_until(lambda: len(server.chunks("warm-up")) == 1)
        eventually(lambda: uplink.status().chunks_sent == 1, timeout=5, what="acknowledged")
        reads.clear()
        before = sum(voluntary_switches(t.native_id) for t in workers)
        sealer = ChunkSealer(DEVICE, KEY.public_key())
        rng = np.random.default_rng(5)
        spool.create_session("one-by-one", DEVICE)
        for seq in range(chunks):
            pcm = rng.normal(0, 200, 32_000).astype(np.int16)
            spool.append(sealer.seal("one-by-one", seq, seq * 2.0, pcm))
            uplink.wake()
            eventually(
                lambda sent=seq + 2: uplink.status().chunks_sent == sent,
                timeout=5,
                what="acknowledged",
            )
        woken = sum(voluntary_switches(t.native_id) for t in workers) - before
    finally:
        uplink.stop()
    print(f"\nper chunk: {len(reads) / chunks:.1f} spool reads, {woken / chunks:.1f} wake-ups")
    assert len(reads) <= 2 * chunks, f"{len(reads)} spool reads for {chunks} chunks"
    # Today one HTTP exchange costs a worker about 9; every worker woken each time, 45.
    assert woken <= 20 * chunks, f"{woken} worker wake-ups for {chunks} chunks"


def test_idle_workers_keep_one_rescan_clock_between_them(server, spool, monkeypatch):
    """The safety-net rescan (a chunk nobody woke the uplink for) is one idle worker's
    job: every worker timing out on its own read the spool four times as often as the
    net needs, each a wake-up and a directory listing, all day long on an idle device."""
    rescan_s = 0.2
    monkeypatch.setattr("agent.link.uplink.RESCAN_S", rescan_s)
    rescans: list[float] = []
    pending = spool.pending

    def counted():
        if threading.current_thread().name.startswith("uplink-"):
            rescans.append(time.monotonic())
        return pending()

    monkeypatch.setattr(spool, "pending", counted)
    uplink = start_uplink(link(server), spool)
    try:
        eventually(lambda: len(rescans) >= 1, timeout=5, what="the first scan")
        first = len(rescans)
        eventually(lambda: len(rescans) >= first + 6, timeout=10, what="six rescans")
        took = rescans[first + 5] - rescans[first - 1]
        # Spooled without a wake(): the clock's keeper still finds it.
        spool_session(spool, "unannounced", 1)
        server.wait_until(lambda: len(server.chunks("unannounced")) == 1)
    finally:
        uplink.stop()
    print(f"\nsix rescans took {took:.2f} s at RESCAN_S {rescan_s} s")
    assert took >= 5 * rescan_s, f"six rescans in {took:.2f} s: more than one clock"
