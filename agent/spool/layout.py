"""Names on disk under the spool directory; file names hold only ids and seqs.

::

    lock                                   flock: one process owns the spool at a time
    forgotten.jsonl                        sessions delivered and removed; ids never reused
    sessions/<session>/journal.jsonl       see journal.py
    sessions/<session>/00000007.chunk      one sealed chunk (protocol.envelope)
    sessions/<session>/00000008.tmp        a chunk being written (or torn by a crash)
    sessions/.new-<session>/               a session being created (renamed when ready)
    quarantine/index.jsonl                 why each file was quarantined
    quarantine/<session | _spool>/<file>
    .trash/                                a forgotten session being removed
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from protocol.ids import ID_PATTERN, SessionId

SESSIONS = "sessions"
LOCK = "lock"
FORGOTTEN = "forgotten.jsonl"
TRASH = ".trash"
NEW_PREFIX = ".new-"
CHUNK_NAME = re.compile(r"^(\d{8})\.chunk$")
TMP_NAME = re.compile(r"^(\d{8})\.tmp$")
SESSION_NAME = re.compile(ID_PATTERN)


def chunk_name(seq: int) -> str:
    return f"{seq:08d}.chunk"


def tmp_name(seq: int) -> str:
    return f"{seq:08d}.tmp"


class ForgottenRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: SessionId
    at: datetime
