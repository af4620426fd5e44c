"""Every device reason code has its own fix (findings.py), and an unknown one a fallback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.diagnostics.findings import UNKNOWN_FIX, error_fix
from agent.settings import AgentSettings
from protocol.messages import ChunkRefusal, DeviceReason

# Codes that name two states of one thing share a fix that names the state.
SHARED = {
    DeviceReason.SPOOL_READ_ONLY: DeviceReason.SPOOL_UNUSABLE,
}


@pytest.fixture
def settings(tmp_path: Path) -> AgentSettings:
    return AgentSettings(device_id="room-1", state_dir=tmp_path)


def test_every_reason_has_its_own_fix(settings: AgentSettings) -> None:
    fixes = {reason: error_fix(reason.value, settings) for reason in DeviceReason}
    assert UNKNOWN_FIX not in fixes.values(), [r for r, f in fixes.items() if f == UNKNOWN_FIX]
    distinct = {reason: fix for reason, fix in fixes.items() if reason not in SHARED}
    assert len(set(distinct.values())) == len(distinct), "two reasons share one fix"
    for reason, same_as in SHARED.items():
        assert fixes[reason] == fixes[same_as]


def test_a_code_from_another_version_gets_the_log(settings: AgentSettings) -> None:
    assert error_fix("http_404", settings) == UNKNOWN_FIX


def test_not_the_gateway_names_the_status_the_device_got(settings: AgentSettings) -> None:
    refused = ChunkRefusal(session_id="s-1", seq=0, status=403, code="http_403")
    fix = error_fix(DeviceReason.NOT_THE_GATEWAY, settings, refused)
    assert "HTTP 403 from something that is not the room-gateway" in fix
