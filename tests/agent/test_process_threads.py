"""The agent's process starts no threads it does not name: every thread it runs is one of
its own, woken only by its own work (a Pi-class core pays for each wake-up)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_numpy_starts_no_blas_threads_in_the_agent() -> None:
    # OpenBLAS starts one worker per extra core when numpy is imported, and each worker
    # spins for a while after every BLAS call the pipeline makes (np.dot, @): on a 4-core
    # Pi that is three threads burning CPU for vectors of a few thousand samples.
    code = (
        "import os, agent.cli, numpy as np; "
        "a = np.ones(4096, dtype=np.float32); np.dot(a, a); "
        "print(len(os.listdir('/proc/self/task')))"
    )
    env = {k: v for k, v in os.environ.items() if "BLAS" not in k and "OMP" not in k}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(done.stdout) == 1, "the agent's imports started threads of their own"
