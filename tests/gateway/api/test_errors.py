"""The one error format: every code the gateway raises is in the catalogue, and the spec
documents every error response as problem+json restricted to the codes it can carry."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.api.errors import CATALOGUE, MEDIA_TYPE, documented_codes, problems
from gateway.app import create_app
from gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[3]
# code="..." on a GatewayError/IngestError, or ApiError("...", ...) in a route.
RAISED = re.compile(r'code="([a-z_]+)"|ApiError\(\s*"([a-z_]+)"')


def raised_codes() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        for match in RAISED.finditer(path.read_text()):
            found.add(match.group(1) or match.group(2))
    return found


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state_dir = tmp_path_factory.mktemp("state")
    settings = GatewaySettings(state_dir=state_dir, testing={"audio_endpoint": True})
    return create_app(settings).openapi()


def test_catalogue_codes_are_snake_case_with_error_statuses() -> None:
    for code, entry in CATALOGUE.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert 400 <= entry.status < 600, code
        assert entry.title and entry.meaning, code


def test_every_raised_code_is_in_the_catalogue() -> None:
    raised = raised_codes()
    assert {"room_busy", "room_not_provisioned", "missing_token"} <= raised
    assert raised - set(CATALOGUE) == set()


def test_problems_groups_codes_by_status() -> None:
    documented = problems("room_busy", "device_busy", "session_not_found")
    assert set(documented) == {404, 409}
    operation = {"responses": {str(k): v for k, v in documented.items()}}
    assert documented_codes(operation, 409) == ["room_busy", "device_busy"]


def test_every_error_response_in_the_spec_is_a_documented_problem(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "Problem" in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        if path == "/readyz":  # a report for load balancers (its 503 lists the problems)
            continue
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                assert list(response["content"]) == [MEDIA_TYPE], (method, path, status)
                codes = documented_codes(operation, int(status))
                assert codes, (method, path, status)
                assert all(CATALOGUE[code].status == int(status) for code in codes)
