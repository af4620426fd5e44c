"""Secrets from a settings value, a ``*_file`` path, or a systemd credential.

Both programs take their secrets (Blueprint credentials; a device's ingest token and MQTT
password) the same three ways, so that a unit never needs them in its config file or
environment: ``LoadCredential=NAME:...`` puts the secret in ``$CREDENTIALS_DIRECTORY/NAME``.
Errors name the file, never the content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
# Where scripts/install.sh keeps the credential files that the units load. A person who
# runs a command by hand (`sudo room-agent status`) has no $CREDENTIALS_DIRECTORY, so the
# same files are read from here; ROOM_AUDIO_CREDENTIALS moves it (the tests do).
INSTALLED_CREDENTIALS_ENV = "ROOM_AUDIO_CREDENTIALS"
INSTALLED_CREDENTIALS = "/etc/room-audio/credentials"
MAX_SECRET_FILE_BYTES = 64 * 1024
# A required secret (with a default) stays required: the result is None only if `value` may be.
_Secret = TypeVar("_Secret", bound=SecretStr | None)


def read_secret_file(path: Path) -> SecretStr:
    """A secret kept in a file, without its trailing newline."""
    try:
        data = path.read_bytes()[: MAX_SECRET_FILE_BYTES + 1]
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_SECRET_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not text:
        raise ValueError(f"{path}: is empty")
    return SecretStr(text)


def resolve_secret(
    value: _Secret, given: bool, file: Path | None, credential: str, name: str
) -> _Secret | SecretStr:
    """The value set directly, else the ``*_file``, else the systemd credential (or, by
    hand, the installed credential file), else the default; setting both a value and a
    file is a mistake worth reporting."""
    if given and file is not None:
        raise ValueError(f"set {name} or {name}_file, not both")
    if given:
        return value
    if file is not None:
        return read_secret_file(file)
    path = _credential_file(credential)
    return read_secret_file(path) if path is not None else value


def _credential_file(credential: str) -> Path | None:
    """systemd's copy when run as a unit; else the installed file, if we may read it."""
    if os.environ.get(CREDENTIALS_ENV):
        path = Path(os.environ[CREDENTIALS_ENV]) / credential
        return path if _is_file(path) else None
    path = Path(os.environ.get(INSTALLED_CREDENTIALS_ENV, INSTALLED_CREDENTIALS)) / credential
    return path if _is_file(path) and os.access(path, os.R_OK) else None


def _is_file(path: Path) -> bool:
    """Path.is_file, but a directory this user may not enter (the installed credentials
    to an admin command run as the service's user) counts as no file, not as an error."""
    try:
        return path.is_file()
    except OSError:
        return False


def credential_copies(credential: str) -> list[SecretStr]:
    """Every readable copy of a credential, the one changed last first: systemd's (made
    when the unit started) and the installed file, which a rotation replaces while the
    service runs. For a running service re-reading its secrets (SIGHUP, a refused one)."""
    paths = []
    if os.environ.get(CREDENTIALS_ENV):
        paths.append(Path(os.environ[CREDENTIALS_ENV]) / credential)
    paths.append(
        Path(os.environ.get(INSTALLED_CREDENTIALS_ENV, INSTALLED_CREDENTIALS)) / credential
    )
    found = []
    for path in paths:
        try:
            changed = path.stat().st_mtime_ns
            found.append((changed, read_secret_file(path)))
        except (OSError, ValueError):
            continue
    return [secret for _, secret in sorted(found, key=lambda item: item[0], reverse=True)]
