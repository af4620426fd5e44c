"""What a Blueprint call costs the gateway's one event loop, beyond the request itself."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

import pytest

from .test_client import ensure_people

pytestmark = pytest.mark.anyio


class ImportSearches(importlib.abc.MetaPathFinder):
    """Records every module the import system goes looking for (a name that is already
    imported never reaches the finders)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        self.names.append(fullname)
        return None


async def test_a_call_does_not_search_sys_path_for_a_module(sim) -> None:
    """httpcore asks for sniffio on every request; were it missing, each call would scan
    sys.path for it (a tenth of the gateway's CPU under load, measured with py-spy)."""
    async with sim.client() as client:
        await ensure_people(client, "warm")  # the first call imports what it needs once
        searches = ImportSearches()
        sys.meta_path.insert(0, searches)
        try:
            for suffix in range(5):
                await ensure_people(client, f"cost-{suffix}")
        finally:
            sys.meta_path.remove(searches)
    assert searches.names == []
