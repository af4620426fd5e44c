"""The simulator under concurrent calls: one record per external id, as Blueprint keeps.

In process (httpx.ASGITransport): the race is between the app's own handlers, so a real
server adds nothing but time. Each round sends the same create several times at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from devtools.simulator.app import SimulatorConfig, create_app
from gateway.blueprint import paths
from gateway.blueprint.defaults import DEFAULT_API_KEY, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROUNDS = 40  # before the fix about one round in five made a duplicate
AT_ONCE = 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(SimulatorConfig()))
    headers = {"X-API-Key": DEFAULT_API_KEY}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim", headers=headers
    ) as client:
        answer = await client.post(
            paths.AUTHENTICATE,
            json={"clientId": DEFAULT_CLIENT_ID, "clientSecret": DEFAULT_CLIENT_SECRET},
        )
        client.headers["access-token"] = answer.json()["accessToken"]
        yield client


async def _at_once(http: httpx.AsyncClient, path: str, body: dict) -> list[int]:
    answers = await asyncio.gather(*(http.post(path, json=body) for _ in range(AT_ONCE)))
    return sorted(a.status_code for a in answers)


async def test_concurrent_creates_make_one_clinician_each(http: httpx.AsyncClient) -> None:
    for n in range(ROUNDS):
        body = {"externalId": f"clin-{n}", "firstName": "A", "lastName": "B", "email": None}
        assert await _at_once(http, paths.CLINICIANS, body) == [201] + [409] * (AT_ONCE - 1)
    found = await http.get(paths.CLINICIANS)
    assert len(found.json()["items"]) == ROUNDS


async def test_overlapping_session_creates_record_one_session(http: httpx.AsyncClient) -> None:
    clinician = await http.post(
        paths.CLINICIANS, json={"externalId": "c", "firstName": "A", "lastName": "B"}
    )
    client = await http.post(
        paths.CLIENTS,
        json={
            "externalId": "k",
            "firstName": "C",
            "lastName": "D",
            "clinicianId": clinician.json()["id"],
        },
    )
    for n in range(ROUNDS):
        body = {
            "clinicianId": clinician.json()["id"],
            "clientId": client.json()["id"],
            "sessionExternalId": f"s-{n}",
        }
        assert await _at_once(http, paths.SESSIONS, body) == [201] + [409] * (AT_ONCE - 1)
    found = await http.get(paths.SESSIONS)
    assert len(found.json()["items"]) == ROUNDS
