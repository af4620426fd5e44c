"""The /console for clinic IT: rooms live, sessions, failed jobs, devices (ids only)."""
