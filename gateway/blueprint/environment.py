"""Which Blueprint environment a Blueprint id belongs to.

Blueprint ids are only meaningful in the environment that issued them (staging and
production, or one partner account and another): the gateway stores, next to each id,
the environment it came from, and never uses it in another. An environment is its base
URL and the partner's client id; stored as a short digest, so no credential lands in the
database or a log.
"""

from __future__ import annotations

import hashlib


def environment_id(base_url: str, client_id: str) -> str:
    key = f"{base_url.rstrip('/')}\n{client_id}".encode()
    return "bpenv_" + hashlib.sha256(key).hexdigest()[:16]
