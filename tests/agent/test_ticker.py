"""The agent's once-a-second looks (agent/ticker.py): the privacy flag file and the
device's problems for the room share one thread, which costs the device almost nothing
while nothing changes."""

from __future__ import annotations

import time

from agent.privacy import PrivacySwitch, set_flag
from agent.ticker import Ticker
from tests.support.eventually import eventually
from tests.support.wakeups import voluntary_switches


def test_the_privacy_flag_is_seen_within_a_tick_and_the_looks_share_one_wake_up(tmp_path):
    switch = PrivacySwitch(tmp_path)
    looked: list[float] = []
    ticker = Ticker()
    ticker.add("privacy", switch.poll)
    ticker.add("feedback", lambda: looked.append(time.monotonic()))
    ticker.start()
    try:
        assert ticker.native_id is not None
        before = voluntary_switches(ticker.native_id)
        time.sleep(3.0)  # a rate, measured: each wake-up costs a Pi-class core
        woken = voluntary_switches(ticker.native_id) - before
        assert woken <= 4, f"{woken} wake-ups in 3 s for two looks a second"
        assert len(looked) >= 2, "the second look did not run every tick"
        set_flag(tmp_path, True)
        eventually(lambda: switch.engaged, timeout=1.5, what="the switch engaged")
    finally:
        ticker.stop()


def test_a_failing_look_does_not_stop_the_others(tmp_path, caplog):
    switch = PrivacySwitch(tmp_path)
    ticker = Ticker(period_s=0.05)

    def broken() -> None:
        raise RuntimeError("an indicator's bug")

    ticker.add("feedback", broken)
    ticker.add("privacy", switch.poll)
    ticker.start()
    try:
        set_flag(tmp_path, True)
        eventually(lambda: switch.engaged, timeout=2, what="the switch engaged")
    finally:
        ticker.stop()
    assert "ticker: the feedback look failed" in caplog.text
