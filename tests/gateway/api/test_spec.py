"""The OpenAPI document partners generate clients from: checked in, and complete.

Seen before: auto-generated operation ids (``put_clinician_v1_clinicians__external_id__put``),
no examples, the partner callback missing from the spec, and no copy of the spec in the
repository to notice a change by.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.api import spec

ROOT = Path(__file__).resolve().parents[3]
CHECKED_IN = ROOT / "docs" / "openapi.json"
PARTNER_TAGS = {"clinicians and clients", "sessions", "rooms"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return spec.document()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_the_checked_in_spec_is_what_the_code_serves(document: dict[str, Any]) -> None:
    assert CHECKED_IN.read_text() == spec.render(document), (
        "docs/openapi.json drifted from the code: run `room-gateway openapi -o docs/openapi.json`"
        " and review the diff (partners generate clients from it)"
    )


def test_operation_ids_are_readable_and_unique(document: dict[str, Any]) -> None:
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", op_id) for op_id in ids), ids
    assert {"start_session", "list_sessions", "cancel_session", "delete_client"} <= set(ids)


def test_every_operation_is_described_and_tagged(document: dict[str, Any]) -> None:
    known_tags = {tag["name"] for tag in document["tags"]}
    for method, path, operation in operations(document):
        assert operation.get("description"), (method, path)
        assert operation.get("tags") and set(operation["tags"]) <= known_tags, (method, path)


def test_partner_bodies_and_answers_have_examples(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    def example_of(schema: dict[str, Any]) -> bool:
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        if schema.get("type") == "array":
            return example_of(schema["items"])
        return bool(schema.get("examples") or schema.get("example"))

    for method, path, operation in operations(document):
        if not PARTNER_TAGS & set(operation["tags"]):
            continue
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            assert example_of(body["schema"]), (method, path, "request")
        for status, response in operation["responses"].items():
            content = response.get("content", {})
            if status.startswith("2") and "application/json" in content:
                assert example_of(content["application/json"]["schema"]), (method, path, status)


def test_the_partner_callback_is_under_webhooks(document: dict[str, Any]) -> None:
    callback = document["webhooks"]["partner-callback"]["post"]
    schema_ref = callback["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(body["properties"]["event"]["enum"]) == {
        "notes_ready",
        "note_updated",
        "session_failed",
    }
    assert "webhook-signature" in callback["description"] + body["description"]
