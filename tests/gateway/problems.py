"""What every error answer of the gateway must be: RFC 9457 problem+json with a code
from the catalogue, at the catalogue's status."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.api.errors import CATALOGUE, MEDIA_TYPE, TYPE_PREFIX


def assert_problem(
    answer: httpx.Response | Any, status: int | tuple[int, ...], code: str | None = None
) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert answer.status_code in statuses, (answer.status_code, answer.text)
    content_type = answer.headers.get("content-type")
    if isinstance(content_type, list):  # schemathesis' responses: each header a list
        content_type = content_type[0]
    assert content_type is not None and content_type.split(";")[0] == MEDIA_TYPE, answer.headers
    problem = answer.json()
    assert problem["status"] == answer.status_code, problem
    assert problem["code"] in CATALOGUE, problem
    assert CATALOGUE[problem["code"]].status == answer.status_code, problem
    assert problem["type"] == TYPE_PREFIX + problem["code"], problem
    assert problem["title"] and problem["detail"], problem
    if code is not None:
        assert problem["code"] == code, problem
    return problem
