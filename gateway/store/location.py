"""Where the store is: a SQLite file, or a PostgreSQL server named by a URL without secrets.

``store.url`` is ``sqlite:///absolute/path.db`` or ``postgresql://user@host[:port]/dbname``
(libpq's query parameters, such as ``?sslmode=verify-full&sslrootcert=...``, may follow).
The password never goes in the URL, because URLs end up in logs, process lists and error
messages: it comes from ``store.password_file``, the systemd credential
``gateway-database-password``, or libpq's own ``~/.pgpass``. Only ``display`` (scheme,
user, host, port, database) is ever printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

SQLITE_SCHEMES = ("sqlite",)
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class SqliteLocation:
    path: Path

    @property
    def display(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PostgresLocation:
    conninfo: str  # the URL as libpq reads it, without a password
    display: str
    password: SecretStr | None = None
    pool_size: int = 4
    connect_timeout_s: float = 5.0
    unavailable_s: float = 2.0  # how long a transaction waits for the server to come back


Location = SqliteLocation | PostgresLocation


class UrlError(ValueError):
    """The URL cannot name a store; the message says what to write instead."""


def parse_url(url: str) -> SqliteLocation | PostgresLocation:
    """The location ``url`` names (PostgreSQL: without pool settings or password)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in SQLITE_SCHEMES:
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise UrlError("a SQLite URL is sqlite:///absolute/path/to/gateway.db")
        return SqliteLocation(Path(unquote(parts.path)))
    if scheme in POSTGRES_SCHEMES:
        if parts.password is not None:
            raise UrlError(
                "has a password: keep it out of the URL (URLs get logged); put it in"
                " store.password_file or the systemd credential gateway-database-password"
            )
        try:
            port = parts.port
        except ValueError:
            raise UrlError("port must be 1..65535") from None
        database = unquote(parts.path.lstrip("/"))
        if not parts.hostname and "host=" not in parts.query:
            raise UrlError("no host: postgresql://user@host[:port]/database")
        if not database:
            raise UrlError("no database name: postgresql://user@host[:port]/database")
        user = f"{unquote(parts.username)}@" if parts.username else ""
        where = parts.hostname or "(socket)"
        display = f"postgresql://{user}{where}{f':{port}' if port else ''}/{database}"
        return PostgresLocation(conninfo=url, display=display)
    raise UrlError("must start with sqlite:/// or postgresql://")
