"""The gateway's tables, as ordered migrations: never edit a shipped one, append a new one.

Migration N runs once, in one transaction, on a database at version N-1; the version is
recorded in ``schema_version``. Names, emails and note text live only in ``clinicians``,
``clients`` and ``artifacts``; every other table holds ids and states, so jobs, timelines
and webhook records can be listed and logged freely.
"""

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: rooms, people, sessions and their timeline, artifacts, webhooks, jobs, tokens.
    (
        """CREATE TABLE rooms (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE clinicians (
            external_id TEXT PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            email TEXT,
            blueprint_id TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE clients (
            external_id TEXT PRIMARY KEY,
            first_name TEXT NOT NULL,
            last_name TEXT NOT NULL,
            clinician_external_id TEXT NOT NULL REFERENCES clinicians (external_id),
            blueprint_id TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL REFERENCES rooms (id),
            clinician_external_id TEXT NOT NULL REFERENCES clinicians (external_id),
            client_external_id TEXT NOT NULL REFERENCES clients (external_id),
            session_setting TEXT NOT NULL,
            note_type TEXT,
            state TEXT NOT NULL,
            resume_state TEXT,
            blueprint_session_id TEXT,
            audio_path TEXT,
            audio_content_type TEXT,
            error TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX sessions_by_blueprint_id ON sessions (blueprint_session_id)",
        # A room records one session at a time; the database enforces it, not a race.
        """CREATE UNIQUE INDEX one_active_session_per_room ON sessions (room_id)
            WHERE state IN ('recording', 'stopping')""",
        """CREATE TABLE session_events (
            id INTEGER PRIMARY KEY,
            session_id TEXT NOT NULL REFERENCES sessions (id),
            at REAL NOT NULL,
            step TEXT NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX session_events_by_session ON session_events (session_id, id)",
        """CREATE TABLE artifacts (
            session_id TEXT NOT NULL REFERENCES sessions (id),
            kind TEXT NOT NULL,
            event_type TEXT NOT NULL,
            body TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            PRIMARY KEY (session_id, kind)
        )""",
        """CREATE TABLE webhook_events (
            id INTEGER PRIMARY KEY,
            digest TEXT NOT NULL UNIQUE,
            event_type TEXT NOT NULL,
            blueprint_session_id TEXT,
            session_id TEXT,
            outcome TEXT NOT NULL,
            received_at REAL NOT NULL
        )""",
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            next_run_at REAL NOT NULL,
            last_error TEXT,
            session_id TEXT,
            dedupe_key TEXT UNIQUE,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX jobs_due ON jobs (state, next_run_at)",
        "CREATE INDEX jobs_by_session ON jobs (session_id)",
        """CREATE TABLE partner_tokens (
            id TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            label TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
    ),
    # 2: the device link. A room's device: its credentials (hashes only), its last reported
    # state, the sealed chunks it sent and the sessions they make up, the commands sent to it,
    # and where the broker's files are kept.
    (
        "ALTER TABLE rooms ADD COLUMN name TEXT",
        "ALTER TABLE rooms ADD COLUMN token_sha256 TEXT",
        "ALTER TABLE rooms ADD COLUMN mqtt_password_hash TEXT",
        "ALTER TABLE rooms ADD COLUMN cert_fingerprint TEXT",
        "ALTER TABLE rooms ADD COLUMN credentials_issued_at REAL",
        "ALTER TABLE rooms ADD COLUMN revoked_at REAL",
        "CREATE UNIQUE INDEX rooms_by_token ON rooms (token_sha256)",
        """CREATE TABLE room_status (
            room_id TEXT PRIMARY KEY REFERENCES rooms (id),
            online INTEGER NOT NULL,
            recorder TEXT NOT NULL,
            session_id TEXT,
            reason TEXT,
            backlog_chunks INTEGER NOT NULL DEFAULT 0,
            backlog_bytes INTEGER NOT NULL DEFAULT 0,
            spool_free_bytes INTEGER,
            version TEXT,
            state_at REAL NOT NULL,
            last_seen_at REAL NOT NULL
        )""",
        """CREATE TABLE ingest_sessions (
            session_id TEXT PRIMARY KEY,
            device_id TEXT NOT NULL,
            claimed INTEGER NOT NULL,
            state TEXT NOT NULL CHECK (state IN
                ('receiving', 'waiting_for_chunks', 'assembling', 'assembled', 'failed')),
            manifest TEXT,
            closed_at REAL,
            audio_path TEXT,
            purged_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        """CREATE TABLE chunks (
            session_id TEXT NOT NULL REFERENCES ingest_sessions (session_id),
            seq INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            start_s REAL NOT NULL,
            duration_s REAL NOT NULL,
            file TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (session_id, seq)
        )""",
        """CREATE TABLE device_commands (
            id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL,
            session_id TEXT,
            kind TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('queued', 'sent', 'ok', 'refused', 'expired')),
            reason TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            sent_at REAL,
            answered_at REAL
        )""",
        "CREATE INDEX device_commands_by_session ON device_commands (session_id)",
        """CREATE TABLE broker_files (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            directory TEXT NOT NULL,
            gateway_user TEXT NOT NULL,
            gateway_password_hash TEXT,
            written_at REAL NOT NULL
        )""",
    ),
    # 3: the field. What a room's device says of its microphone and when it last sent a
    # heartbeat; what a diagnostic command (ping, check, logs) answered (numbers and the
    # agent's own log lines, no audio and no names); one-time enrollment codes: only a
    # lookup id derived from the code and the device's bundle sealed with a key derived
    # from it, so the store alone cannot enroll anyone (gateway/devices/enrollment.py).
    (
        "ALTER TABLE room_status ADD COLUMN microphone TEXT",
        "ALTER TABLE room_status ADD COLUMN microphone_device TEXT",
        "ALTER TABLE room_status ADD COLUMN heartbeat_at REAL",
        "ALTER TABLE device_commands ADD COLUMN result TEXT",
        """CREATE TABLE enrollments (
            id TEXT PRIMARY KEY,
            room_id TEXT NOT NULL REFERENCES rooms (id),
            sealed_bundle TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        )""",
        "CREATE INDEX enrollments_by_room ON enrollments (room_id)",
    ),
    # 4: the room's desired state (the device shadow) and what the device reports of pause,
    # "do not record" and the last command it applied; sessions may be starting or paused.
    (
        """CREATE TABLE room_desired (
            room_id TEXT PRIMARY KEY REFERENCES rooms (id),
            session_id TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('recording', 'paused', 'stopped')),
            command_id TEXT,
            origin TEXT NOT NULL CHECK (origin IN ('partner', 'room')),
            deadline_at REAL,
            confirmed_at REAL,
            last_sent_at REAL,
            sends INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )""",
        "ALTER TABLE room_status ADD COLUMN paused INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE room_status ADD COLUMN do_not_record INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE room_status ADD COLUMN last_command_id TEXT",
        "DROP INDEX one_active_session_per_room",
        """CREATE UNIQUE INDEX one_active_session_per_room ON sessions (room_id)
            WHERE state IN ('starting', 'recording', 'paused', 'stopping')""",
    ),
    # 5: the partner API. Blueprint ids belong to the Blueprint environment they were made in
    # (blueprint_env: a digest of base URL + client id; NULL = made before this migration,
    # taken as the current one); a PUT with changed details marks the record for an update
    # in Blueprint; a DELETE forgets the names (deleted_at; the row stays for the sessions
    # that name it). The first answer to a POST with an Idempotency-Key, per partner token
    # (its digest), replayed to a retry. Admin tokens for the /console (hashes only).
    (
        "ALTER TABLE clinicians ADD COLUMN blueprint_env TEXT",
        "ALTER TABLE clinicians ADD COLUMN needs_update INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE clinicians ADD COLUMN deleted_at REAL",
        "ALTER TABLE clients ADD COLUMN blueprint_env TEXT",
        "ALTER TABLE clients ADD COLUMN needs_update INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE clients ADD COLUMN deleted_at REAL",
        "ALTER TABLE sessions ADD COLUMN blueprint_env TEXT",
        "CREATE INDEX sessions_by_created ON sessions (created_at, id)",
        """CREATE TABLE idempotency_keys (
            principal TEXT NOT NULL,
            idempotency_key TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            request_sha256 TEXT NOT NULL,
            status INTEGER NOT NULL,
            body TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (principal, idempotency_key)
        )""",
        "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at)",
        """CREATE TABLE admin_tokens (
            id TEXT PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            label TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        )""",
    ),
    # 6: jobs across replicas. A running job is leased to the replica running it (its name
    # and incarnation) until lease_expires_at; once that has passed, another replica takes it.
    (
        "ALTER TABLE jobs ADD COLUMN lease_owner TEXT",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at REAL",
        "CREATE INDEX jobs_by_lease ON jobs (state, lease_expires_at)",
    ),
    # 7: audio in the store every replica shares (gateway/sessions/audio_vault.py): a chunk's
    # sealed bytes as received, a session's audio as parts encrypted with the audio key, and
    # that key's fingerprint (a replica with another key refuses to start).
    (
        "ALTER TABLE chunks ADD COLUMN sealed BLOB",
        """CREATE TABLE audio_parts (
            audio_id TEXT NOT NULL,
            part INTEGER NOT NULL,
            session_id TEXT NOT NULL,
            data BLOB NOT NULL,
            PRIMARY KEY (audio_id, part)
        )""",
        "CREATE INDEX audio_parts_by_session ON audio_parts (session_id)",
        """CREATE TABLE audio_key (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            fingerprint TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
    ),
    # 8: the order of the gateway's decisions for a room (gateway/relay/commands.py): each
    # session command's generation, above every earlier one of its room, so the device can
    # refuse one that reaches it after a later one. NULL: queued before this migration.
    (
        "ALTER TABLE device_commands ADD COLUMN generation BIGINT",
        "CREATE INDEX device_commands_by_room ON device_commands (room_id, generation)",
    ),
)
