"""The README's promises that a test can hold: the two commands, and a configuration
reference that matches the settings models (regenerate it with `make docs`)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_config_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, "README config reference is stale: run `make docs`"


def test_the_layout_table_names_every_package_of_the_tree():
    """The Development section's table is how a newcomer finds their room: every package
    folder of the agent and the gateway is in it (its own row, or the gateway's row)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Development") : text.index("## Configuration reference")]
    gateway_row = next(row for row in table.splitlines() if row.startswith("| `gateway/` |"))

    def named(top: str, name: str) -> bool:
        if f"`{top}/{name}/`" in table:
            return True
        return top == "gateway" and re.search(rf"\b{name}\b", gateway_row) is not None

    packages = [
        (top, folder.name)
        for top in ("agent", "gateway")
        for folder in sorted((ROOT / top).iterdir())
        if (folder / "__init__.py").exists()
    ]
    missing = [f"{top}/{name}/" for top, name in packages if not named(top, name)]
    assert not missing, f"README's layout table does not name {missing}"
