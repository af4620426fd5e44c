import pytest
from pydantic import ValidationError

from protocol import messages, topics


def test_topics_round_trip():
    for kind in topics.KINDS:
        assert topics.parse(topics.topic("room-7", kind)) == ("room-7", kind)
    assert topics.parse("rooms/room-7/other") is None
    assert topics.parse("rooms//state") is None
    assert topics.parse("elsewhere/room-7/state") is None
    assert topics.all_devices("events", shared=True) == "$share/gateway/rooms/+/events"


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (messages.commands, messages.StartCommand(command_id="c1", session_id="s-1")),
        (messages.commands, messages.StopCommand(command_id="c2", session_id="s-1")),
        (messages.commands, messages.CheckCommand(command_id="c3", seconds=3)),
        (messages.commands, messages.LogsCommand(command_id="c4", since_s=60, max_lines=10)),
        (
            messages.device_events,
            messages.CommandResult(
                command_id="c3",
                ok=True,
                check=messages.RoomCheck(
                    seconds=3,
                    rms_dbfs=-40,
                    peak_dbfs=-12,
                    speech_dbfs=-30,
                    noise_floor_dbfs=-60,
                    snr_db=30,
                    speech_share=0.4,
                    clipped_share=0,
                    verdict="good",
                ),
            ),
        ),
        (messages.commands, messages.PauseCommand(command_id="c3", session_id="s-1")),
        (messages.commands, messages.ResumeCommand(command_id="c4", session_id="s-1")),
        (
            messages.commands,
            messages.StartCommand(command_id="c5", session_id="s-1", paused=True),
        ),
        (
            messages.device_events,
            messages.SessionPaused(session_id="s-1", source="button", offset_s=12.5),
        ),
        (messages.device_events, messages.SessionResumed(session_id="s-1")),
        (messages.notifications, messages.NotesReady(session_id="s-1")),
        (messages.notifications, messages.SessionFailed(session_id="s-1", reason="upload")),
        (messages.device_events, messages.ChunkSpooled(session_id="s-1", seq=4, duration_s=2.5)),
        (
            messages.device_events,
            messages.SessionClosed(session_id="s-1", reason="stopped", chunks=3, speech_s=9.0),
        ),
    ],
)
def test_round_trip(adapter, message):
    assert adapter.validate_json(message.model_dump_json()) == message


def test_no_extra_fields_can_ride_along():
    """A payload with anything beyond ids and numbers (say, a name) is rejected."""
    with pytest.raises(ValidationError):
        messages.commands.validate_json(
            '{"type":"start","command_id":"c","session_id":"s","client_name":"x"}'
        )


def test_ids_are_checked():
    with pytest.raises(ValidationError):
        messages.StartCommand(command_id="c", session_id="../../etc")


def test_device_state_fields_are_additive():
    """A state from an agent that knows nothing of microphone or key checks still parses;
    the new fields carry codes only."""
    old = '{"type":"state","device_id":"room-1","online":true,"at":"2025-01-01T00:00:00Z"}'
    state = messages.DeviceState.model_validate_json(old)
    assert (state.microphone, state.sealing_key, state.refused) == (None, None, None)
    refused = messages.ChunkRefusal(session_id="s-1", seq=3, status=422, code="wrong_key")
    state = messages.DeviceState(
        device_id="room-1", online=True, microphone="missing", sealing_key="mismatch",
        refused=refused,
    )  # fmt: skip
    assert messages.DeviceState.model_validate_json(state.model_dump_json()) == state
    with pytest.raises(ValidationError):  # a code, not free text
        messages.ChunkRefusal(session_id="s-1", status=422, code="Sam Doe's chunk")


def test_device_state_reports_pause_privacy_and_the_last_command():
    state = messages.DeviceState(
        device_id="room-1", online=True, recorder="recording", session_id="s-1",
        paused=True, do_not_record=False, last_command_id="cmd_1",
    )  # fmt: skip
    assert messages.DeviceState.model_validate_json(state.model_dump_json()) == state
    # An older device's state (without the new fields) still parses, with safe defaults.
    old = messages.DeviceState.model_validate_json('{"device_id":"room-1","online":true}')
    assert (old.paused, old.do_not_record, old.last_command_id) == (False, False, None)


def test_a_manifest_lists_paused_intervals_as_times_only():
    from protocol.manifest import SessionManifest

    manifest = SessionManifest.model_validate(
        {
            "device_id": "room-1",
            "session_id": "s-1",
            "paused": [{"offset_s": 3.0, "started_at": "2024-01-01T10:00:00Z",
                        "ended_at": "2024-01-01T10:00:05Z"}],
        }
    )  # fmt: skip
    assert manifest.paused[0].offset_s == 3.0
    with pytest.raises(ValidationError):
        SessionManifest.model_validate(
            {"device_id": "room-1", "session_id": "s-1",
             "paused": [{"offset_s": 1, "started_at": "2024-01-01T10:00:00Z",
                         "ended_at": "2024-01-01T10:00:05Z", "audio": "x"}]}
        )  # fmt: skip
