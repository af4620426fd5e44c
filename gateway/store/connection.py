"""What a store function gets: a connection inside one transaction, the same on both engines.

``conn.execute(sql, params)`` takes SQL in the portable spelling described in
``gateway/store/__init__.py`` (``?`` placeholders) and returns a cursor whose rows read by
name or position. ``conn.after_commit(callback)`` defers a side effect (waking a worker,
say) until the transaction has committed: a function run by ``Database.run`` may be run
again after a serialization failure, and must not act on what it has not committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.store.dialect import Dialect, Engine

Params = Sequence[Any]


class Row(Protocol):
    """A result row: ``row["name"]``, ``row[0]``, ``row.keys()``, ``dict(row)``."""

    def __getitem__(self, key: int | str) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """The transaction's connection, as store functions see it."""

    @property
    def engine(self) -> Engine: ...

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, params: Params = ()) -> Cursor: ...

    def after_commit(self, callback: Callable[[], object]) -> None: ...

    @property
    def commit_cpu_s(self) -> float:
        """In an after-commit callback: this transaction's share of its COMMIT's CPU."""
        ...


class AfterCommit:
    """The callbacks a transaction registered; run once it has committed, dropped if not."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], object]] = []
        # This transaction's share of its COMMIT's CPU, set before the callbacks run: a
        # group commit's is shared by its members (the stage counters would otherwise
        # charge each member with the others' statements and the whole fsync).
        self.commit_cpu_s = 0.0

    def after_commit(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def discard_callbacks(self) -> None:
        self._callbacks.clear()

    def run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()
