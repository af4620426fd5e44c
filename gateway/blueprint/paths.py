"""Every Blueprint partner API path, relative to the configured base URL.

The clinician, client, session and audio endpoints are not in Blueprint's public docs
(see blueprint-api.md, "our assumed contract"), so when the real ones turn out different
this is the one module to change: the client and the simulator both build on it.
Templates use FastAPI's ``{name}`` syntax so the simulator can route on them directly.
"""

from __future__ import annotations

from urllib.parse import quote

AUTHENTICATE = "/partners/authenticate"
PARTNERS = "/partners"
PARTNER = "/partners/{partner_id}"
CLINICIANS = "/clinicians"
CLIENTS = "/clients"
# Updating a record's details (names, email, a client's clinician) is assumed to be a PATCH
# of the record by its Blueprint id, with the changed fields of the create body
# (blueprint-api.md does not know one; `blueprint.record_updates = false` keeps changes
# local).
CLINICIAN = "/clinicians/{clinician_id}"
CLIENT = "/clients/{client_id}"
SESSIONS = "/sessions"
SESSION_AUDIO = "/sessions/{session_id}/audio"
# The session's current progress note, asked for when its webhook never came (assumed:
# 200 with the note as its webhook's progressNoteUrl gives it, 404 until there is one).
SESSION_PROGRESS_NOTE = "/sessions/{session_id}/progress-note"

# Artifact URLs reach the gateway as absolute URLs inside webhooks; only the simulator
# needs to know their shape, which is its own invention.
PROGRESS_NOTE = "/progress-notes/{note_id}"
TRANSCRIPT = "/sessions/{session_id}/transcript"

EXTERNAL_ID_PARAM = "externalId"
SESSION_EXTERNAL_ID_PARAM = "sessionExternalId"


def partner(partner_id: str) -> str:
    return PARTNER.format(partner_id=_segment(partner_id))


def clinician(clinician_id: str) -> str:
    return CLINICIAN.format(clinician_id=_segment(clinician_id))


def client(client_id: str) -> str:
    return CLIENT.format(client_id=_segment(client_id))


def session_audio(session_id: str) -> str:
    return SESSION_AUDIO.format(session_id=_segment(session_id))


def session_progress_note(session_id: str) -> str:
    return SESSION_PROGRESS_NOTE.format(session_id=_segment(session_id))


def progress_note(note_id: str) -> str:
    return PROGRESS_NOTE.format(note_id=_segment(note_id))


def transcript(session_id: str) -> str:
    return TRANSCRIPT.format(session_id=_segment(session_id))


def _segment(value: str) -> str:
    """Ids come from Blueprint's responses; quote them so none can add a path segment."""
    return quote(value, safe="")
