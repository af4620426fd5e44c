"""SealingKeys under concurrent use: ingest opens chunks on many threads at once, and a
thread must never see the key files' new stamp before the keys read from them (it would
find no key and take a good chunk for one sealed to another gateway)."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.keys import SealingKeys, create_key, load_key, rotate_key
from tests.support.sealed_chunk import sealed_chunk

THREADS = 8
ROUNDS = 20


def sealed_to(key_file: Path) -> bytes:
    return sealed_chunk(load_key(key_file).public_key())


def open_at_once(keys: SealingKeys, blob: bytes) -> list[str]:
    """Every thread opens ``blob`` at the same moment; the errors they met."""
    start = threading.Barrier(THREADS)
    errors: list[str] = []

    def one() -> None:
        start.wait()
        try:
            keys.open(blob)
        except Exception as exc:  # collected for the assertion
            errors.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_threads_opening_at_once_all_find_the_key(tmp_path: Path) -> None:
    key_file = tmp_path / "sealing-key.pem"
    create_key(key_file)
    blob = sealed_to(key_file)
    errors = [error for _ in range(ROUNDS) for error in open_at_once(SealingKeys(key_file), blob)]
    assert errors == []


def test_threads_opening_at_once_after_a_rotation_all_find_the_new_key(tmp_path: Path) -> None:
    key_file = tmp_path / "sealing-key.pem"
    create_key(key_file)
    keys = SealingKeys(key_file)
    errors: list[str] = []
    for _ in range(ROUNDS):
        rotate_key(key_file)
        errors += open_at_once(keys, sealed_to(key_file))
    assert errors == []
