"""File descriptors: the gateway takes all it may, and caps its connections below that.

Each connection is a descriptor; so are the store, the MQTT link, Blueprint's and the
partner callbacks' connection pools, and the files assembly and export open. Running out
(EMFILE) stops accept() for everyone, /healthz included, so the soft limit is raised to
the hard one at start, and connections are capped ``RESERVED`` below it.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Descriptors kept for everything but client connections.
RESERVED = 256
# Far below any real limit; what a tiny limit still leaves for connections.
MIN_CONNECTIONS = 16
# With an unlimited hard limit, take this many (the kernel's nr_open is usually 1 M).
UNLIMITED_TARGET = 65_536


@dataclass(frozen=True)
class Descriptors:
    limit: int  # the soft RLIMIT_NOFILE now in force
    raised_from: int | None  # what it was, if this raised it
    max_connections: int  # the connection cap: the configured one, below the limit


def take_descriptors(configured_connections: int) -> Descriptors:
    """Raise the soft descriptor limit as far as allowed; the cap that fits under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    raised_from = None
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            raised_from, soft = soft, target
        except (ValueError, OSError):
            pass  # keep what we have; the cap below fits it
    limit = UNLIMITED_TARGET if soft == resource.RLIM_INFINITY else soft
    fits = max(MIN_CONNECTIONS, limit - RESERVED) if limit > 2 * RESERVED else limit // 2
    return Descriptors(limit, raised_from, max(1, min(configured_connections, fits)))
