"""The partner API refuses bad input with a 4xx and a reason, never a 500, and never echoes
what it was sent; schemathesis fuzzes every operation of /openapi.json for 5xx.

Refusals that need nothing from a running server (authentication, validation, body size)
are asked of the app in this process (the ``app`` fixture: fastapi's TestClient, with the
settings the module's gateway process has); the rest of the partner API, the fuzzing and
the admin CLI go to that real `room-gateway serve`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from gateway.api.errors import documented_codes
from gateway.app import create_app
from gateway.sessions.audio_files import CONTENT_TYPES
from gateway.settings import load_gateway_settings
from protocol.ingest import SEALED_CHUNK_CONTENT_TYPE
from tests.gateway.conftest import (
    CLIENT_NAMES,
    CLINICIAN,
    PARTNER_TOKEN,
    PHI_STRINGS,
    GatewayProcess,
    SimulatorProcess,
)
from tests.gateway.problems import assert_problem

pytestmark = pytest.mark.timeout(180)

AUTH = {"Authorization": f"Bearer {PARTNER_TOKEN}"}
BIG = 2 * 1024 * 1024  # over http.max_body_bytes (1 MiB)


@pytest.fixture(scope="module")
def people(blueprint_sim: SimulatorProcess, gateway: GatewayProcess) -> GatewayProcess:
    gateway.put_people("clin-api", "client-api")
    return gateway


@contextlib.contextmanager
def in_process(state_dir: Path, blueprint_url: str, **env: str) -> Iterator[TestClient]:
    """The gateway's app in this process, its lifespan (store, job worker) running, with
    the settings `room-gateway serve` loads from GatewayProcess's environment (+ ``env``),
    the test runner's own ROOM_GATEWAY_* variables left out as they are for the process."""
    process = GatewayProcess(state_dir, blueprint_url, env)  # not started: its settings
    process.http.close()
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:
            if name.startswith("ROOM_GATEWAY_"):
                patch.delenv(name)
        for name, value in process.env.items():
            if name.startswith("ROOM_GATEWAY_"):
                patch.setenv(name, value)
        settings = load_gateway_settings(None)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def app(
    blueprint_sim: SimulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The module's gateway settings (partner token, audio endpoint on), in this process."""
    with in_process(tmp_path_factory.mktemp("in-process"), blueprint_sim.url) as client:
        yield client


def request(
    gateway: GatewayProcess | TestClient, method: str, path: str, **kwargs: Any
) -> httpx.Response:
    """A request with the partner token, to a gateway process or to the app in process."""
    headers = {**AUTH, **kwargs.pop("headers", {})}
    if not isinstance(gateway, GatewayProcess):
        return gateway.request(method, path, headers=headers, **kwargs)
    return httpx.request(method, gateway.url + path, headers=headers, timeout=30, **kwargs)


def assert_refused(
    answer: httpx.Response, status: int | tuple[int, ...], code: str | None = None
) -> str:
    """A 4xx of the expected kind as problem+json, with a code and a reason, echoing none
    of the names sent; returns the reason."""
    for name in PHI_STRINGS:
        assert name not in answer.text
    return assert_problem(answer, status, code)["detail"]


# --- authentication ---------------------------------------------------------------------

PROTECTED = [
    ("PUT", "/v1/clinicians/c1"),
    ("GET", "/v1/clinicians/c1"),
    ("PUT", "/v1/clients/p1"),
    ("GET", "/v1/clients/p1"),
    ("GET", "/v1/rooms"),
    ("POST", "/v1/sessions"),
    ("GET", "/v1/sessions/ses_x"),
    ("POST", "/v1/sessions/ses_x/stop"),
    ("GET", "/v1/sessions/ses_x/artifacts"),
    ("POST", "/v1/sessions/ses_x/audio"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_partner_endpoint_needs_a_valid_token(
    app: TestClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
        answer = app.request(method, path, headers=headers, json=CLINICIAN)
        code = "missing_token" if "Bearer " not in headers.get("Authorization", "") else None
        detail = assert_refused(answer, 401, code or "invalid_token")
        assert "token" in detail
        assert answer.headers["www-authenticate"] == "Bearer"


def test_created_tokens_work_until_revoked(gateway: GatewayProcess) -> None:
    created = gateway.cli("partner-token", "create", "--label", "ehr")
    token = created.stdout.strip()
    assert token.startswith("rgp_") and "not shown again" in created.stderr
    database = (gateway.state_dir / "gateway.db").read_bytes()
    assert token.encode() not in database  # stored hashed only
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gateway.url}/v1/rooms", headers=headers).status_code == 200
    token_id = created.stderr.split()[1]
    listed = gateway.cli("partner-token", "list").stdout
    assert token_id in listed and "active" in listed and token not in listed
    gateway.cli("partner-token", "revoke", token_id)
    assert httpx.get(f"{gateway.url}/v1/rooms", headers=headers).status_code == 401


# --- bad bodies and paths -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"first_name": 5, "last_name": "Quintrell"},
        {"first_name": "Adelaide"},
        {"first_name": "", "last_name": "Quintrell"},
        {"first_name": "Adelaide", "last_name": "Quintrell", "email": "not-an-email"},
        {"first_name": "Adelaide", "last_name": "Quintrell", "frist_name": "typo"},
        {"first_name": "Adelaide" * 40, "last_name": "Quintrell"},
        ["Adelaide", "Quintrell"],
        "Adelaide Quintrell",
        None,
    ],
)
def test_put_clinician_rejects_bad_bodies(app: TestClient, body: Any) -> None:
    answer = request(app, "PUT", "/v1/clinicians/c-bad", json=body)
    problem = assert_problem(answer, 422, "invalid_request")
    assert problem["errors"], problem
    assert all(error["field"] and error["message"] for error in problem["errors"])
    assert all("input" not in error for error in problem["errors"])  # values never echoed


def test_bad_external_ids_in_paths(app: TestClient) -> None:
    for path in (
        "/v1/clinicians/has%20space",
        "/v1/clinicians/" + "x" * 129,
        "/v1/clients/-leading-dash",
        "/v1/clinicians/%C3%A9",
    ):
        assert_refused(request(app, "PUT", path, json=CLINICIAN), 422, "invalid_request")
    assert_refused(request(app, "GET", "/v1/clinicians/nobody"), 404, "clinician_not_found")
    assert_refused(request(app, "GET", "/v1/clients/nobody"), 404, "client_not_found")


def test_put_client_needs_a_known_clinician(app: TestClient) -> None:
    body = {**CLIENT_NAMES, "clinician_external_id": "never-put"}
    answer = request(app, "PUT", "/v1/clients/p-orphan", json=body)
    detail = assert_refused(answer, 422, "unknown_clinician")
    assert "clinician never-put not found" in detail
    body = {**CLIENT_NAMES}
    assert_refused(request(app, "PUT", "/v1/clients/p-orphan", json=body), 422)


def test_start_session_rejects_unknown_references(people: GatewayProcess) -> None:
    base = {
        "room": "room-9",
        "clinician_external_id": "clin-api",
        "client_external_id": "client-api",
    }
    cases = [
        ({**base, "room": "no-such-room"}, "room_not_provisioned", "room no-such-room is not"),
        ({**base, "room": "bad room"}, "invalid_request", None),
        ({**base, "clinician_external_id": "ghost"}, "unknown_clinician", "clinician ghost not"),
        ({**base, "client_external_id": "ghost"}, "unknown_client", "client ghost not found"),
        ({**base, "session_setting": "on-the-moon"}, "invalid_request", None),
        ({**base, "note_type": "SOAP NOTE"}, "invalid_request", None),
        ({**base, "room": 7}, "invalid_request", None),
        ({**base, "extra": True}, "invalid_request", None),
    ]
    for body, code, reason in cases:
        detail = assert_refused(request(people, "POST", "/v1/sessions", json=body), 422, code)
        if reason:
            assert reason in detail


def test_room_busy_is_409_and_sessions_404(people: GatewayProcess) -> None:
    first = people.start_session("room-8", "clin-api", "client-api")
    body = {
        "room": "room-8",
        "clinician_external_id": "clin-api",
        "client_external_id": "client-api",
    }
    detail = assert_refused(request(people, "POST", "/v1/sessions", json=body), 409, "room_busy")
    assert first in detail
    rooms = {r["room"]: r["active_session_id"] for r in request(people, "GET", "/v1/rooms").json()}
    assert rooms["room-8"] == first
    for method, path in [
        ("GET", "/v1/sessions/ses_doesnotexist"),
        ("POST", "/v1/sessions/ses_doesnotexist/stop"),
        ("GET", "/v1/sessions/ses_doesnotexist/artifacts"),
    ]:
        assert_refused(request(people, method, path), 404, "session_not_found")
    assert_refused(request(people, "GET", "/v1/sessions/not%20an%20id"), 422, "invalid_request")
    # Stopping twice is harmless; the room is free once the session is past stopping.
    assert request(people, "POST", f"/v1/sessions/{first}/stop").json()["state"] == "stopping"
    assert request(people, "POST", f"/v1/sessions/{first}/stop").json()["state"] == "stopping"


def test_huge_non_utf8_and_non_json_bodies(app: TestClient) -> None:
    huge = json.dumps({"first_name": "x" * BIG, "last_name": "y"}).encode()
    assert_refused(
        request(
            app,
            "PUT",
            "/v1/clinicians/c-huge",
            content=huge,
            headers={"Content-Type": "application/json"},
        ),
        413,
    )
    for content in (
        b"\xff\xfe\xfa\x00{",
        b'{"first_name": "\xe9", "last_name": "x"}',
        b"not json",
        b"",
        b"{" * 10_000,
    ):
        answer = request(
            app,
            "PUT",
            "/v1/clinicians/c-bytes",
            content=content,
            headers={"Content-Type": "application/json"},
        )
        assert_refused(answer, (400, 422))
    answer = request(
        app,
        "PUT",
        "/v1/clinicians/c-form",
        content=b"first_name=a",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_refused(answer, (400, 415, 422))


def test_test_only_audio_endpoint_refusals(people: GatewayProcess, flac_audio: Path) -> None:
    session_id = people.start_session("room-7", "clin-api", "client-api")
    path = f"/v1/sessions/{session_id}/audio"
    assert_refused(
        request(people, "POST", path, content=b"RIFF", headers={"Content-Type": "audio/wav"}), 415
    )
    assert_refused(
        request(people, "POST", path, content=b"", headers={"Content-Type": "audio/flac"}), 400
    )
    assert_refused(
        request(
            people,
            "POST",
            "/v1/sessions/ses_nope/audio",
            content=b"x",
            headers={"Content-Type": "audio/flac"},
        ),
        404,
    )
    attached = request(
        people,
        "POST",
        path,
        content=flac_audio.read_bytes(),
        headers={"Content-Type": "audio/flac"},
    )
    assert attached.status_code == 202
    again = request(
        people,
        "POST",
        path,
        content=flac_audio.read_bytes(),
        headers={"Content-Type": "audio/flac"},
    )
    assert_refused(again, 409)


def test_audio_endpoint_is_off_by_default(blueprint_sim: SimulatorProcess, tmp_path: Path) -> None:
    off = {"ROOM_GATEWAY_TESTING__AUDIO_ENDPOINT": "false"}
    with in_process(tmp_path, blueprint_sim.url, **off) as gateway:
        paths = gateway.get("/openapi.json").json()["paths"]
        assert "/v1/sessions/{session_id}/audio" not in paths
        answer = request(
            gateway,
            "POST",
            "/v1/sessions/ses_x/audio",
            content=b"x",
            headers={"Content-Type": "audio/flac"},
        )
    assert answer.status_code in (404, 405)


def test_openapi_describes_the_partner_api(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/v1/clinicians/{external_id}",
        "/v1/clients/{external_id}",
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/stop",
        "/v1/sessions/{session_id}/artifacts",
        "/v1/webhooks/blueprint",
        "/v1/rooms",
    ):
        assert path in paths, path
    assert "HTTPBearer" in document["components"]["securitySchemes"]


# --- fuzzing ------------------------------------------------------------------------------

FUZZ_EXAMPLES = 20  # per operation and generation mode
# The test-only audio endpoint and device ingest take raw bytes: send them as binary.
schemathesis.serializer.alias(
    [*sorted(CONTENT_TYPES), SEALED_CHUNK_CONTENT_TYPE], "application/octet-stream"
)


@pytest.mark.slow
def test_fuzz_every_operation_no_server_errors(people: GatewayProcess) -> None:
    """schemathesis generates valid and invalid requests for each operation of
    /openapi.json, sent with a valid token: none may be answered with a 5xx, and every
    error is problem+json with a code the spec documents for that operation and status.

    (The schemathesis pytest plugin's lazy fixture loader fails on pytest 9, so the
    operations' hypothesis strategies are driven directly.)"""
    spec = httpx.get(f"{people.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    statuses: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: Any) -> None:
                response = case.call(base_url=people.url, headers=AUTH, timeout=30)
                statuses[(case.operation.label, response.status_code)] += 1
                case.validate_response(response, checks=[not_a_server_error])
                if response.status_code >= 400:
                    operation_spec = spec["paths"][case.operation.path][case.operation.method]
                    problem = assert_problem(response, response.status_code)
                    documented = documented_codes(operation_spec, response.status_code)
                    assert problem["code"] in documented, (case.operation.label, problem)

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    print(f"\nfuzzed {sum(statuses.values())} requests over {len(operations)} operations:")
    for (label, status), count in sorted(statuses.items()):
        print(f"  {label}: {status} x{count}")
    assert not [key for key in statuses if key[1] >= 500]
