"""Room devices: their credentials, the broker's files that admit them, their config."""
