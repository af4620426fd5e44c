"""The /console and /docs in a real browser (Debian's chromium, driven by Playwright) against
a running gateway with its broker: sign-in with an admin token, rooms live (a device going
offline shows within 2 s), sessions and their timelines, retry of a failed job from the
page, devices added, rotated and revoked; no request leaves the gateway, no name shows.
Screenshots are kept in test-artifacts/."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from protocol.messages import DeviceState
from tests.gateway.conftest import (
    PHI_STRINGS,
    GatewayProcess,
    SimulatorProcess,
    screenshot,
)
from tests.gateway.deployment import Deployment
from tests.gateway.relay.test_relay import FakeDevice

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
OFFLINE_WITHIN_MS = 2000


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, blueprint_sim: SimulatorProcess
) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("console")
    deployment = Deployment(
        root, blueprint_sim.url, ("room-1", "room-2"), ROOM_GATEWAY_JOBS__MAX_ATTEMPTS="2"
    ).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def admin_token(deployed: Deployment) -> str:
    return deployed.gateway.cli("admin-token", "create", "--label", "it").stdout.strip()


class Outside:
    """Every request the page makes that is not to the gateway itself (there must be none)."""

    def __init__(self, page: Any, origin: str) -> None:
        self.requests: list[str] = []

        def route(route: Any) -> None:
            url = route.request.url
            if url.startswith(origin) or url.startswith("data:"):
                route.continue_()
            else:
                self.requests.append(url)
                route.abort()

        page.route("**/*", route)


@pytest.fixture
def page(browser: Any, deployed: Deployment) -> Iterator[tuple[Any, Outside]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    outside = Outside(opened, deployed.gateway.url)
    try:
        yield opened, outside
    finally:
        context.close()


def sign_in(page: Any, gateway: GatewayProcess, token: str) -> None:
    page.goto(f"{gateway.url}/console")
    page.get_by_label("Admin token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_selector("#console:not([hidden])")


def online_cell(page: Any, room: str) -> Any:
    return page.locator(f'#rooms tr[data-room="{room}"] td[data-field="online"]')


def test_sign_in_needs_an_admin_token_not_a_partner_token(
    page: tuple[Any, Outside], deployed: Deployment, admin_token: str
) -> None:
    browser_page, outside = page
    gateway = deployed.gateway
    assert gateway.http.get("/console/api/rooms").status_code == 401  # partner token: no
    browser_page.goto(f"{gateway.url}/console")
    browser_page.get_by_label("Admin token").fill("rgp_test-token-configured-in-env")
    browser_page.get_by_role("button", name="Sign in").click()
    browser_page.get_by_text("That admin token is not valid.").wait_for()
    sign_in(browser_page, gateway, admin_token)
    cookie = next(c for c in browser_page.context.cookies() if c["name"] == "room_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    # A change without the console's header (a cross-site form) is refused.
    answer = gateway.http.post(
        "/console/api/jobs/1/retry", headers={"Cookie": f"room_console={admin_token}"}
    )
    assert answer.status_code == 401 and answer.json()["code"] == "console_login_required"
    assert outside.requests == []


def test_rooms_are_live_and_an_offline_room_shows_within_2_s(
    page: tuple[Any, Outside], deployed: Deployment, admin_token: str
) -> None:
    browser_page, outside = page
    device = FakeDevice(deployed, "room-1")
    offline = DeviceState(device_id="room-1", online=False).model_dump_json()
    device.client.will_set("rooms/room-1/state", offline, qos=1, retain=True)
    device.connect()
    device.state(recorder="idle")
    sign_in(browser_page, deployed.gateway, admin_token)
    online_cell(browser_page, "room-1").filter(has_text="online").wait_for(timeout=10_000)
    screenshot(browser_page, "console-rooms-online")

    # The device drops off the network: its broker connection breaks, its will is sent.
    started = time.monotonic()
    device.client.socket().close()
    online_cell(browser_page, "room-1").filter(has_text="offline").wait_for(
        timeout=OFFLINE_WITHIN_MS
    )
    elapsed_ms = (time.monotonic() - started) * 1000
    print(f"\nroom-1 offline on the page {elapsed_ms:.0f} ms after its connection broke")
    screenshot(browser_page, "console-room-offline")
    device.client.loop_stop()
    assert outside.requests == []


def test_retry_a_failed_job_from_the_page(
    page: tuple[Any, Outside],
    deployed: Deployment,
    admin_token: str,
    blueprint_sim: SimulatorProcess,
) -> None:
    browser_page, outside = page
    gateway = deployed.gateway
    blueprint_sim.reset()
    gateway.put_people("clin-console", "client-console")
    blueprint_sim.faults(fail_next=1000, fail_status=503)
    session_id = gateway.start_session("room-2", "clin-console", "client-console")
    failed = gateway.wait_for_state(session_id, "failed", timeout=60)
    job_id = next(job["job_id"] for job in failed["pending"] if job["state"] == "failed")
    blueprint_sim.faults(fail_next=0)

    sign_in(browser_page, gateway, admin_token)
    row = browser_page.locator(f'#jobs tr[data-job="{job_id}"]')
    row.wait_for()
    browser_page.get_by_role("button", name=f"Retry job {job_id}").click()
    browser_page.get_by_role("status").filter(has_text=f"job {job_id}").wait_for()
    gateway.wait_for_session(session_id, lambda s: s["blueprint"]["session_id"] is not None)
    row.wait_for(state="detached", timeout=10_000)  # gone from the failed list, live

    browser_page.get_by_role("button", name=f"{session_id} timeline").click()
    detail = browser_page.locator("#session-detail")
    detail.get_by_text("resumed").wait_for()
    detail.get_by_text("blueprint_session_created").wait_for()
    screenshot(browser_page, "console-session-timeline")
    text = browser_page.content()
    for name in PHI_STRINGS:
        assert name not in text
    gateway.http.post(f"/v1/sessions/{session_id}/cancel")
    assert outside.requests == []


def test_devices_add_rotate_revoke(
    page: tuple[Any, Outside], deployed: Deployment, admin_token: str
) -> None:
    browser_page, outside = page
    sign_in(browser_page, deployed.gateway, admin_token)
    browser_page.get_by_label("Room id").fill("room-9")
    browser_page.get_by_role("button", name="Add device").click()
    result = browser_page.locator("#device-result")
    result.filter(has_text="device room-9: credentials issued").wait_for()
    assert "devices/room-9" in result.inner_text()
    row = browser_page.locator('#devices tr[data-device="room-9"]')
    row.filter(has_text="active").wait_for()
    listed = json.loads(deployed.gateway.cli("device", "list", "--json").stdout.splitlines()[-1])
    assert listed["id"] == "room-9" and listed["status"] == "active"
    issued_before = listed["issued_at"]

    browser_page.get_by_role("button", name="Rotate device room-9").click()
    result.filter(has_text="device room-9: credentials issued").wait_for()
    rotated = [
        json.loads(line)
        for line in deployed.gateway.cli("device", "list", "--json").stdout.splitlines()
    ]
    assert next(d for d in rotated if d["id"] == "room-9")["issued_at"] > issued_before

    browser_page.once("dialog", lambda dialog: dialog.accept())
    browser_page.get_by_role("button", name="Revoke device room-9").click()
    row.filter(has_text="revoked").wait_for()
    screenshot(browser_page, "console-devices")
    secrets = (deployed.gateway.state_dir / "devices" / "room-9").iterdir()
    text = browser_page.content()
    for path in secrets:
        if path.suffix in ("", ".token", ".password"):
            secret = path.read_text().strip()
            assert not secret or secret not in text
    assert outside.requests == []


def test_usable_on_a_phone_and_by_keyboard(
    browser: Any, deployed: Deployment, admin_token: str
) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone = context.new_page()
    outside = Outside(phone, deployed.gateway.url)
    try:
        phone.goto(f"{deployed.gateway.url}/console")
        phone.keyboard.press("Tab")
        focused = phone.evaluate("document.activeElement.id")
        if focused != "token":  # the sign-out button comes first only when signed in
            phone.keyboard.press("Tab")
        phone.keyboard.type(admin_token)
        phone.keyboard.press("Enter")
        phone.wait_for_selector("#console:not([hidden])")
        unlabelled = phone.evaluate(
            """[...document.querySelectorAll('input')].filter(
                   i => !i.labels || i.labels.length === 0).map(i => i.id)"""
        )
        assert unlabelled == []
        overflow = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, "the page scrolls sideways on a phone"
        screenshot(phone, "console-phone")
        assert outside.requests == []
    finally:
        context.close()


def test_api_docs_load_offline(page: tuple[Any, Outside], deployed: Deployment) -> None:
    browser_page, outside = page
    browser_page.goto(f"{deployed.gateway.url}/docs")
    browser_page.locator(".opblock").first.wait_for(timeout=20_000)
    operations = browser_page.locator(".opblock").count()
    assert operations >= 14
    browser_page.get_by_text("start_session").first.wait_for()
    screenshot(browser_page, "api-docs")
    assert outside.requests == []
