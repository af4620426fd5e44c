"""Room devices' audio at the gateway: sealed chunks in, durably; one file per session out."""
