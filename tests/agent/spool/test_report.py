"""What the diagnostics read of the spool, through agent.spool's public surface."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.spool import oldest_chunk_age_s


def test_the_oldest_chunks_age_counts_chunk_files_only(tmp_path: Path) -> None:
    assert oldest_chunk_age_s(tmp_path) is None
    session = tmp_path / "sessions" / "therapy-1"
    session.mkdir(parents=True)
    for name, age in (("00000001.chunk", 300), ("00000002.chunk", 60), ("00000003.tmp", 900)):
        (session / name).write_bytes(b"sealed")
        then = time.time() - age
        os.utime(session / name, (then, then))
    oldest = oldest_chunk_age_s(tmp_path)
    assert oldest is not None and 299 <= oldest <= 310
