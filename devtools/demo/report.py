"""The demo's results as text: the progress note the partner reads, and the session's
timeline as the gateway recorded it, with the time of each step and the durations that
matter (how long the room recorded, how fast audio and note followed the stop).

Both come from the partner API (``GET /v1/sessions/{id}/artifacts`` and ``/v1/sessions/
{id}``), i.e. exactly what an EHR integration would see.
"""

from __future__ import annotations

import textwrap
from datetime import datetime
from typing import Any

WIDTH = 100
SPANS = (  # (label, from step, to step): the durations worth a line under the timeline
    ("partner start -> device recording", "created", "start_confirmed"),
    ("recording (start -> stop)", "start_confirmed", "stopped"),
    ("stop -> all audio at the gateway", "stopped", "audio_ready"),
    ("assembled -> uploaded to Blueprint", "audio_ready", "audio_uploaded"),
    ("uploaded -> note ready", "audio_uploaded", "notes_ready"),
    ("note ready -> device notified", "notes_ready", "device_notified:notes_ready"),
    ("stop -> note ready", "stopped", "notes_ready"),
)


def note_lines(artifacts: dict[str, Any]) -> list[str]:
    """The progress note's sections (title, then content, wrapped), as Blueprint wrote it."""
    note = artifacts.get("progress_note") or {}
    body = note.get("body") or {}
    sections = body.get("note") or []
    template = body.get("template") or "?"
    lines = [
        f"Progress note ({template}, {len(sections)} sections; from {note.get('event_type')}):"
    ]
    for section in sections:
        title = section.get("title") or section.get("key") or "?"
        lines.append(f"  {title} [{section.get('key')}]")
        content = str(section.get("content") or "")
        lines += textwrap.wrap(content, WIDTH, initial_indent="    ", subsequent_indent="    ")
    return lines


def timeline_lines(session: dict[str, Any]) -> list[str]:
    """Every step with its time since the session was created and since the step before."""
    entries = [(_at(entry), entry["step"], entry.get("detail")) for entry in session["timeline"]]
    if not entries:
        return ["Timeline: (empty)"]
    first = entries[0][0]
    lines = [f"Timeline of session {session['session_id']} (the gateway's, with durations):"]
    previous = first
    for at, step, detail in entries:
        extra = f"  {detail}" if detail else ""
        lines.append(f"  {at - first:8.3f} s  (+{at - previous:6.3f} s)  {step}{extra}")
        previous = at
    lines.append("Durations:")
    times = _first_times(entries)
    for label, start, end in SPANS:
        if start in times and end in times:
            lines.append(f"  {label:<36} {times[end] - times[start]:8.3f} s")
    return lines


def _first_times(entries: list[tuple[float, str, str | None]]) -> dict[str, float]:
    """When each step first happened, by name and by "name:detail" (device_notified happens
    once per notification: session_uploaded, notes_ready)."""
    times: dict[str, float] = {}
    for at, step, detail in entries:
        times.setdefault(step, at)
        times.setdefault(f"{step}:{detail}", at)
    return times


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["at"]).timestamp()
