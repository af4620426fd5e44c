"""Checks on the files and directories a program's settings name, done the way the program
will use them, so `config validate` reports at install time what would otherwise fail at
start: a state directory that cannot be created, a TLS file that is missing or not PEM.

Each returns None when all is well, else one short phrase naming the path (never a file's
content). Nothing is created or changed.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path


def unwritable_dir(path: Path) -> str | None:
    """Why ``path`` cannot be used (or created) as a writable directory, or None."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{path}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            return f"{path}: not writable"
        return f"{path}: cannot be created ({existing} is not writable)"
    return None


def ca_file_problem(path: Path) -> str | None:
    """A CA bundle the program will verify its peer with."""
    return _tls_problem(path, False, lambda context: context.load_verify_locations(path))


def client_cert_problem(cert: Path, key: Path | None) -> str | None:
    """A certificate (and key) the program presents as a TLS client."""
    return _tls_problem(cert, False, lambda context: context.load_cert_chain(cert, key))


def server_cert_problem(cert: Path, key: Path) -> str | None:
    """A certificate and key a TLS server (e.g. the broker) will present."""
    return _tls_problem(cert, True, lambda context: context.load_cert_chain(cert, key))


def _tls_problem(path: Path, server: bool, load: Callable[[ssl.SSLContext], None]) -> str | None:
    """Load into a fresh context as the program will; the first problem, phrased."""
    protocol = ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT
    try:
        load(ssl.SSLContext(protocol))
    except FileNotFoundError as exc:
        return f"{exc.filename or path}: no such file"
    except PermissionError as exc:
        return f"{exc.filename or path}: permission denied"
    except IsADirectoryError as exc:
        return f"{exc.filename or path}: is a directory"
    except (ssl.SSLError, OSError, ValueError) as exc:
        why = getattr(exc, "reason", None) or str(exc)
        return f"{path}: not a usable PEM file ({why})"
    return None
