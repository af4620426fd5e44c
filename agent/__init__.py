"""The room agent: captures a therapy room's speech and gets it, sealed, to the gateway."""

import os
import sys

CONFIG_ENV = "ROOM_AGENT_CONFIG"  # the settings file, when --config is not given

# Before anything imports numpy: OpenBLAS would start a worker per extra core, and each
# spins after every BLAS call the pipeline makes on a block's few thousand samples (0 to
# 5% of a core here at random, three spinning threads on a 4-core Pi). The agent's
# vectors are far too small to gain from threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# httpx imports its command line (click, rich, pygments: ~4 MB resident) whenever those are
# installed, as they are beside the test tools. The agent never runs it; a None entry makes
# that import fail, and httpx then defines a stub instead (its documented fallback).
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
