"""The "do not record" switch's watcher: it follows the flag file `room-agent privacy on`
writes, and costs the device almost nothing while nothing changes."""

from __future__ import annotations

import time

from agent.privacy import PrivacySwitch, set_flag
from tests.support.eventually import eventually
from tests.support.wakeups import voluntary_switches


def test_the_watcher_sees_the_flag_within_a_second_and_wakes_about_once_a_second(tmp_path):
    switch = PrivacySwitch(tmp_path)
    switch.start()
    try:
        assert switch._thread is not None and switch._thread.native_id is not None
        native_id = switch._thread.native_id
        before = voluntary_switches(native_id)
        time.sleep(3.0)  # a rate, measured: each wake-up costs a Pi-class core
        woken = voluntary_switches(native_id) - before
        assert woken <= 4, f"{woken} wake-ups in 3 s"
        set_flag(tmp_path, True)
        eventually(lambda: switch.engaged, timeout=1.5, what="the switch engaged")
    finally:
        switch.stop()
