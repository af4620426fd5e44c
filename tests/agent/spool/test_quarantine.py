"""The quarantine's listing, on a real directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.spool import entries as entries_module
from agent.spool import quarantine as quarantine_module
from agent.spool.quarantine import Quarantine


def test_a_quarantine_that_vanishes_between_a_look_and_its_listing_lists_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool can be removed under a running agent (restore.py rebuilds it). A heartbeat
    that looked at the quarantine just then found the directory, then could not list it:
    a FileNotFoundError and a traceback in the log, and no heartbeat (seen in
    tests/agent/spool/test_spool_lost.py, once in a CI run)."""
    spool = tmp_path / "spool"
    (spool / "session-1").mkdir(parents=True)
    (spool / "session-1" / "odd").write_bytes(b"x")
    quarantine = Quarantine(spool)
    quarantine.move(spool / "session-1" / "odd", "session-1", "odd")
    assert [e.reason for e in quarantine.entries()] == ["odd"]

    shutil.rmtree(quarantine.root)
    # As if it vanished just after the look said it was a directory (wherever that look is).
    for module in (entries_module, quarantine_module):
        monkeypatch.setattr(module, "is_directory", lambda path: True, raising=False)
    assert quarantine.entries() == []
