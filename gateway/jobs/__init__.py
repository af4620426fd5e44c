"""Durable jobs: every outbound step is a row, run by a worker with backoff."""
