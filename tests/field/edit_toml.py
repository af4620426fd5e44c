#!/usr/bin/python3
"""The technician at ``sudoedit``: sets the keys in $FIELD_EDITS in the file named.

$FIELD_EDITS is JSON, ``{"table": {"key": value}}``: in each table the key's line
(commented out or not) becomes ``key = value``, or is added under the table's header; a
table the file lacks is added at its end. The rest of the file stays as it was.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path


def toml_value(value: object) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them


def edit(text: str, edits: dict[str, dict[str, object]]) -> str:
    lines = text.splitlines()
    for table, keys in edits.items():
        header = f"[{table}]"
        if header not in (line.strip() for line in lines):
            lines += ["", header]
        start = next(i for i, line in enumerate(lines) if line.strip() == header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        for key, value in keys.items():
            wanted = f"{key} = {toml_value(value)}"
            pattern = re.compile(rf"^#?\s*{re.escape(key)}\s*=")
            found = [i for i in range(start, end) if pattern.match(lines[i])]
            if found:
                lines[found[0]] = wanted
            else:
                lines.insert(start, wanted)
                end += 1
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[-1])
    path.write_text(edit(path.read_text(), json.loads(os.environ["FIELD_EDITS"])))
