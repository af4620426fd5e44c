"""The architecture, as imports: every module of every package is read (its imports at the
top, inside functions, and relative ones), so a rule cannot pass because a module was not
looked at.

- protocol/ is pure: the standard library without I/O, threads or processes, pydantic,
  and cryptography (the chunk envelope and enrollment seal with it; a base dependency);
- the agent never imports the gateway or the development tools;
- the gateway never imports the agent, and the development tools only lazily, from its
  CLI entry (``room-gateway demo`` / ``simulator``);
- runtime/ (what both programs share) imports neither side;
- an API router does not import another router (shared pieces live in deps/models/...);
- outside agent/spool/, the agent uses only ``agent.spool``'s public surface;
- one way to stay connected to MQTT: only runtime/mqtt.py makes a paho client, and only
  runtime/mqtt_connection.py starts its network loop (no paho reconnection anywhere).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "gateway", "protocol", "runtime", "devtools", "partner_client")

# Standard library modules that do I/O, or start threads or processes: not in protocol/.
IO_MODULES = {
    "asyncio", "fcntl", "ftplib", "http", "io", "mmap", "multiprocessing", "os", "pathlib",
    "select", "selectors", "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl",
    "subprocess", "sys", "tempfile", "threading", "urllib", "concurrent", "glob", "logging",
}  # fmt: skip
PROTOCOL_THIRD_PARTY = {"pydantic", "cryptography"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted and absolute
    lazy: bool  # inside a function (runs only when called)
    line: int

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.target}" + (
            " (lazily)" if self.lazy else ""
        )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import statement of a module, with relative ones made absolute."""
    found: list[Import] = []
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(module, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    # `from a import b` may import the module a.b: count both
                    found.append(Import(module, base, lazy, child.lineno))
                    found.append(Import(module, f"{base}.{alias.name}", lazy, child.lineno))
            visit(child, inner)

    visit(ast.parse(source), False)
    return found


def all_imports() -> list[Import]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found.extend(
                imports_of(path.read_text(), module_name(path), path.name == "__init__.py")
            )
    return found


IMPORTS = all_imports()


def top(name: str) -> str:
    return name.split(".")[0]


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_every_package_is_read() -> None:
    importers = {top(i.module) for i in IMPORTS}
    assert importers == set(PACKAGES)
    assert len({i.module for i in IMPORTS}) > 150


def test_protocol_is_pure() -> None:
    def allowed(target: str) -> bool:
        first = top(target)
        if first in ("protocol", "__future__") or first in PROTOCOL_THIRD_PARTY:
            return True
        return first in sys.stdlib_module_names and first not in IO_MODULES

    bad = [str(i) for i in IMPORTS if within(i.module, "protocol") and not allowed(i.target)]
    assert bad == []


def test_the_agent_never_imports_the_gateway_nor_the_development_tools() -> None:
    bad = [
        str(i)
        for i in IMPORTS
        if within(i.module, "agent") and top(i.target) in ("gateway", "devtools")
    ]
    assert bad == []


def test_the_gateway_never_imports_the_agent_and_devtools_only_lazily_from_its_cli() -> None:
    bad = [
        str(i)
        for i in IMPORTS
        if within(i.module, "gateway")
        and (
            top(i.target) == "agent"
            or (top(i.target) == "devtools" and not (i.module == "gateway.cli" and i.lazy))
        )
    ]
    assert bad == []


def test_runtime_imports_neither_side() -> None:
    bad = [
        str(i)
        for i in IMPORTS
        if within(i.module, "runtime") and top(i.target) in ("agent", "gateway", "devtools")
    ]
    assert bad == []


def routers() -> set[str]:
    return {
        module_name(path)
        for path in (ROOT / "gateway" / "api").glob("*.py")
        if "APIRouter(" in path.read_text()
    }


def test_api_routers_do_not_import_other_routers() -> None:
    found = routers()
    assert {"gateway.api.sessions", "gateway.api.rooms"} <= found
    bad = [str(i) for i in IMPORTS if i.module in found and i.target in found - {i.module}]
    assert bad == []


def test_the_spool_is_used_through_its_public_surface() -> None:
    private = [
        str(i)
        for i in IMPORTS
        if not within(i.module, "agent.spool")
        and within(i.target, "agent.spool")
        and i.target != "agent.spool"
        and not _public_name(i.target)
    ]
    assert private == []


def _public_name(target: str) -> bool:
    """``agent.spool.X`` where X is a name agent.spool exports (not a submodule)."""
    name = target.removeprefix("agent.spool.")
    submodules = {p.stem for p in (ROOT / "agent" / "spool").glob("*.py")}
    return "." not in name and name not in submodules


def test_the_walker_sees_lazy_relative_and_from_imports() -> None:
    source = (
        "import os\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def f():\n"
        "    import gateway.app\n"
    )
    found = {(i.target, i.lazy) for i in imports_of(source, "agent.pipeline.x")}
    assert ("os", False) in found
    assert ("agent.pipeline.sibling", False) in found
    assert ("agent.other.thing", False) in found
    assert ("gateway.app", True) in found


# paho's own ways of connecting in the background and reconnecting.
PAHO_RECONNECTION = {"connect_async", "reconnect_delay_set", "loop_start", "loop_forever"}


def paho_uses() -> list[str]:
    """Where a module makes a paho client or drives paho's background connection."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                name = ast.unparse(node.func)
                if name in ("mqtt.Client", "paho.mqtt.client.Client"):
                    found.append(f"{module}:{node.lineno} makes a paho client")
                elif node.func.attr in PAHO_RECONNECTION:
                    found.append(f"{module}:{node.lineno} calls {node.func.attr}")
    return found


def test_one_way_to_stay_connected_to_the_broker() -> None:
    allowed = {"runtime.mqtt": "makes a paho client", "runtime.mqtt_connection": "loop_start"}
    stray = [
        use
        for use in paho_uses()
        if not any(use.startswith(f"{m}:") and what in use for m, what in allowed.items())
    ]
    assert stray == []
