"""The recorded-voice cache is shared by pytest's worker processes and the benchmarks."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np

from tests.support.voices import Clip, _from_cache, _to_cache

WRITERS = 4
ROUNDS = 25


def _write_many(path: str) -> None:
    clip = Clip("v", "a.wav", np.ones(1600, np.float32), ((0, 1600),))
    for _ in range(ROUNDS):
        _to_cache(Path(path), [clip])


def test_processes_building_one_voice_at_once_all_succeed(tmp_path: Path) -> None:
    """Two xdist workers that both miss the cache write it at the same moment."""
    path = tmp_path / "voices" / "v-0123.npz"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path),)) for _ in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)
    assert [w.exitcode for w in writers] == [0] * WRITERS
    (clip,) = _from_cache("v", path)
    assert clip.spans == ((0, 1600),) and len(clip.pcm) == 1600
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
