"""Property tests of the devices' ingest path on a real `room-gateway serve` (issue 10):
whatever arrives — path segments, content types, tokens, bodies (random, bit flips,
truncations), manifests (NaN, inf, 2**70, duplicates, raw bytes) — the gateway never
answers 5xx, every refusal is a problem+json with a catalogued code, and a 2xx comes
only for input that is exactly valid.

Every example uses a session of its own (unclaimed: recorded without a partner session,
so nothing goes on to Blueprint), so no example depends on another. hypothesis keeps no
database (nothing is written into the tree) and runs a fixed number of examples, so the
module's time is bounded.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.keys import load_key
from protocol.envelope import ChunkHeader, seal_chunk
from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE, chunk_path, close_path
from protocol.manifest import ManifestChunk, SessionManifest
from runtime.codec import encode
from tests.gateway.conftest import GatewayProcess
from tests.gateway.deployment import tone
from tests.gateway.problems import assert_problem

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
ROOM, OTHER_ROOM = "room-1", "room-2"
EXAMPLES = 75
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_sessions = itertools.count()
# Where in a body (or token) to flip or cut, taken modulo its length: the lengths vary
# with the example's session id, and hypothesis must draw the same way when it replays.
POSITION = st.integers(0, 2**32)
# Seq spellings that were once taken for chunk 0 (row 11) and other near-misses.
TRICKY_SEQS = [
    "+0", "%200", "0_0", "00", "%D9%A0", "-0", "0x0", "1e3", "%2B0", "0%20", "99999999",
    "0/../0", "0.0", " 0", "0 ", "\u0660", "10000001", "", "%00", "..",
]  # fmt: skip


@dataclass
class Ingest:
    gateway: GatewayProcess
    tokens: dict[str, str]
    key: Any
    http: httpx.Client

    def chunk(self, session_id: str, seq: int, seconds: float = 0.2) -> bytes:
        audio = encode(tone(seconds, seed=seq), "flac")
        header = ChunkHeader(
            device_id=ROOM,
            session_id=session_id,
            seq=seq,
            codec="flac",
            start_s=seq * seconds,
            duration_s=seconds,
            sha256=hashlib.sha256(audio).hexdigest(),
        )
        return seal_chunk(header, audio, self.key.public_key())

    def put(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return self.http.put(path, content=body, headers=headers)


@pytest.fixture(scope="module")
def ingest(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fuzz")
    gateway = GatewayProcess(
        root / "gateway",
        "http://127.0.0.1:9",
        {
            "ROOM_GATEWAY_DEVICES__GATEWAY_URL": "http://127.0.0.1:9",
            "ROOM_GATEWAY_INGEST__MAX_UNCLAIMED_SESSIONS": "100000",
        },
    )
    gateway.cli("keygen")
    tokens = {}
    for room in (ROOM, OTHER_ROOM):
        gateway.cli("device", "add", room, "--out", str(root / room))
        tokens[room] = (root / room / "ingest-token").read_text().strip()
    gateway.start()
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        yield Ingest(gateway, tokens, load_key(gateway.state_dir / "sealing-key.pem"), http)
    gateway.stop()
    assert "Traceback" not in gateway.log(), gateway.log()[-5000:]


def check_answer(answer: httpx.Response, valid: bool, what: object) -> None:
    assert answer.status_code < 500, (what, answer.status_code, answer.text)
    if valid:
        assert answer.status_code == 200, (what, answer.text)
    else:
        assert answer.status_code >= 400, (what, answer.status_code, answer.text)
        assert_problem(answer, answer.status_code)


# --- chunks ---------------------------------------------------------------------------------


def segment(valid: str) -> st.SearchStrategy[tuple[str, bool]]:
    """A path segment: the valid one (percent-encoded or not), or something else."""
    other = st.one_of(
        st.text(min_size=1, max_size=40).map(lambda text: quote(text, safe="")),
        st.sampled_from(TRICKY_SEQS),
        st.sampled_from([quote(valid.upper(), safe=""), valid + "%00", valid + "/", OTHER_ROOM]),
    )
    return st.one_of(
        st.just((valid, True)),
        st.just((quote(valid, safe=""), True)),
        other.filter(lambda text: text not in (valid, quote(valid, safe=""))).map(
            lambda text: (text, False)
        ),
    )


CONTENT_TYPES = st.one_of(
    st.sampled_from(
        [
            (SEALED_CHUNK_CONTENT_TYPE, True),
            (SEALED_CHUNK_CONTENT_TYPE.upper(), True),
            (f"{SEALED_CHUNK_CONTENT_TYPE}; charset=binary", True),
            ("application/octet-stream", False),
            ("application/json", False),
            ("", False),
            (None, False),
            (SEALED_CHUNK_CONTENT_TYPE + "x", False),
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    .map(str.strip)  # an HTTP client sends no value with spaces around it
    .filter(lambda text: text.split(";")[0].strip().lower() != SEALED_CHUNK_CONTENT_TYPE)
    .map(lambda text: (text, False)),
)


@st.composite
def tokens(draw: st.DrawFn, good: str, other: str) -> tuple[str | None, bool]:
    kind = draw(st.sampled_from(["good", "other", "none", "flipped", "basic", "junk", "cut"]))
    if kind == "good":
        return f"Bearer {good}", True
    if kind == "other":
        return f"Bearer {other}", False
    if kind == "none":
        return None, False
    if kind == "flipped":
        at = draw(POSITION) % len(good)
        swapped = "A" if good[at] != "A" else "B"
        return f"Bearer {good[:at]}{swapped}{good[at + 1 :]}", False
    if kind == "basic":
        return f"Basic {good}", False
    if kind == "cut":
        return f"Bearer {good[: draw(POSITION) % len(good)]}".strip(), False
    junk = draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=80))
    return f"Bearer {junk}".strip(), junk == good


@dataclass(frozen=True)
class Body:
    """A request body, shown in a failure report by how it was made, not byte by byte."""

    data: bytes
    valid: bool
    how: str

    def __repr__(self) -> str:
        return f"Body({self.how}, {len(self.data)} bytes, starts {self.data[:24]!r})"


@st.composite
def bodies(draw: st.DrawFn, valid: bytes) -> Body:
    kind = draw(st.sampled_from(["valid", "flip", "truncate", "random", "empty", "extend"]))
    if kind == "valid":
        return Body(valid, True, "valid")
    if kind == "flip":
        at = draw(POSITION) % (len(valid) * 8)
        flipped = bytearray(valid)
        flipped[at // 8] ^= 1 << (at % 8)
        return Body(bytes(flipped), False, f"bit {at} flipped")
    if kind == "truncate":
        cut = draw(POSITION) % len(valid)
        return Body(valid[:cut], False, f"cut at {cut}")
    if kind == "extend":
        return Body(valid + draw(st.binary(min_size=1, max_size=64)), False, "extended")
    if kind == "empty":
        return Body(b"", False, "empty")
    body = draw(st.binary(max_size=4096))
    return Body(body, body == valid, "random")


@FUZZ
@given(data=st.data())
def test_chunk_uploads_never_5xx_and_only_exactly_valid_ones_are_taken(
    ingest: Ingest, data: st.DataObject
) -> None:
    session_id = f"fz-chunk-{next(_sessions)}"
    seq = data.draw(st.integers(0, 3), label="seq")
    valid_chunk = ingest.chunk(session_id, seq)
    device, device_ok = data.draw(segment(ROOM), label="device")
    session, session_ok = data.draw(segment(session_id), label="session")
    seq_text, seq_ok = data.draw(segment(str(seq)), label="seq segment")
    content_type, type_ok = data.draw(CONTENT_TYPES, label="content type")
    authorization, token_ok = data.draw(
        tokens(ingest.tokens[ROOM], ingest.tokens[OTHER_ROOM]), label="token"
    )
    body = data.draw(bodies(valid_chunk), label="body")
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    path = f"/v1/devices/{device}/sessions/{session}/chunks/{seq_text}"
    valid = device_ok and session_ok and seq_ok and type_ok and token_ok and body.valid
    answer = ingest.put(path, body.data, headers)
    check_answer(answer, valid, (path, headers.get("Content-Type"), body))
    if valid:
        receipt = answer.json()
        assert (receipt["session_id"], receipt["seq"]) == (session_id, seq), receipt
        assert receipt["sha256"] == hashlib.sha256(valid_chunk).hexdigest()


# --- manifests ------------------------------------------------------------------------------

WEIRD_NUMBERS: list[Any] = [math.nan, math.inf, -math.inf, 2**70, -(2**70), -1, 1e308, -0.5]
WEIRD_VALUES: list[Any] = [None, True, "0", "", [], {}, *WEIRD_NUMBERS]


def held_session(ingest: Ingest, chunks: int = 2) -> tuple[str, SessionManifest]:
    """A new session with its chunks all held, and the manifest that closes it."""
    session_id = f"fz-manifest-{next(_sessions)}"
    listed = []
    for seq in range(chunks):
        blob = ingest.chunk(session_id, seq)
        answer = ingest.put(
            chunk_path(ROOM, session_id, seq),
            blob,
            {
                "Content-Type": SEALED_CHUNK_CONTENT_TYPE,
                "Authorization": f"Bearer {ingest.tokens[ROOM]}",
            },
        )
        assert answer.status_code == 200, answer.text
        listed.append(
            ManifestChunk(
                seq=seq,
                sha256=hashlib.sha256(blob).hexdigest(),
                bytes=len(blob),
                start_s=seq * 0.2,
                duration_s=0.2,
            )
        )
    return session_id, SessionManifest(device_id=ROOM, session_id=session_id, chunks=listed)


@st.composite
def broken_manifests(draw: st.DrawFn, manifest: dict[str, Any]) -> Body:
    """The manifest changed so that it is no longer exactly valid; (body, how)."""
    kind = draw(
        st.sampled_from(
            ["field", "chunk_field", "duplicate", "reorder", "extra", "raw", "truncate", "flip"]
        )
    )
    changed = json.loads(json.dumps(manifest))
    chunks = changed["chunks"]
    if kind == "field":
        name = draw(st.sampled_from(["device_id", "session_id", "reason", "chunks", "paused"]))
        changed[name] = draw(st.sampled_from([*WEIRD_VALUES, OTHER_ROOM, "fz-elsewhere"]))
    elif kind == "chunk_field":
        entry = draw(st.sampled_from(chunks))
        name = draw(st.sampled_from(["seq", "sha256", "bytes", "start_s", "duration_s"]))
        weird = [*WEIRD_VALUES, "0" * 64]
        if name in ("bytes", "start_s", "duration_s"):
            weird += [entry[name] + 1, entry[name] * 2 + 0.5]
        entry[name] = draw(st.sampled_from(weird))
    elif kind == "duplicate":
        at = draw(POSITION) % len(chunks)
        chunks.insert(at, dict(chunks[at]))
    elif kind == "reorder":
        chunks.reverse()
    elif kind == "extra":
        changed[draw(st.sampled_from(["extra", "Device_id", "chunk"]))] = 1
    body = json.dumps(changed).encode()  # NaN and Infinity as Python writes them
    if kind == "raw":
        body = draw(st.binary(max_size=512))
    elif kind == "truncate":
        body = body[: draw(POSITION) % len(body)]
    elif kind == "flip":
        at = draw(POSITION) % (len(body) * 8)
        flipped = bytearray(body)
        flipped[at // 8] ^= 1 << (at % 8)
        body = bytes(flipped)
    return Body(body, False, kind)


def exactly_valid(body: bytes, session_id: str, held: SessionManifest) -> SessionManifest | None:
    """The manifest in ``body`` if it is one the gateway must take: valid by the protocol,
    naming this device and session, and saying of every chunk it holds what it holds (a
    chunk listed but not yet held is still to come: that is valid too)."""
    try:
        manifest = SessionManifest.model_validate_json(body)
    except ValueError:
        return None
    if (manifest.device_id, manifest.session_id) != (ROOM, session_id):
        return None
    have = {chunk.seq: chunk for chunk in held.chunks}
    for chunk in manifest.chunks:
        mine = have.get(chunk.seq)
        if mine is None:
            continue
        if (chunk.sha256, chunk.bytes) != (mine.sha256, mine.bytes):
            return None
        if (
            abs(chunk.start_s - mine.start_s) > 0.002
            or abs(chunk.duration_s - mine.duration_s) > 0.002
        ):
            return None
    return manifest


@FUZZ
@given(data=st.data())
def test_manifests_never_5xx_and_only_exactly_valid_ones_close_a_session(
    ingest: Ingest, data: st.DataObject
) -> None:
    session_id, manifest = held_session(ingest)
    broken = data.draw(broken_manifests(manifest.model_dump(mode="json")), label="manifest")
    body = broken.data
    content_type = data.draw(
        st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain"]),
        label="content type",
    )
    expected = exactly_valid(body, session_id, manifest) if content_type != "text/plain" else None
    answer = ingest.http.post(
        close_path(ROOM, session_id),
        content=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {ingest.tokens[ROOM]}"},
    )
    check_answer(answer, expected is not None, (broken.how, body[:300]))
    if expected is not None:
        held = {chunk.seq for chunk in manifest.chunks}
        missing = [chunk.seq for chunk in expected.chunks if chunk.seq not in held]
        assert answer.json()["missing"] == missing, answer.text
    # Whatever came before, the device's own manifest still closes the session.
    final = ingest.http.post(
        close_path(ROOM, session_id),
        content=manifest.model_dump_json(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {ingest.tokens[ROOM]}",
        },
    )
    assert final.status_code == 200 and final.json()["complete"], final.text
