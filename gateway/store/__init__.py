"""The gateway's state: one SQLite database (WAL), created and migrated on start."""
