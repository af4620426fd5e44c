"""The limit the gateway's ingest is measured against: its server stack and nothing else.

The same uvicorn and FastAPI as `room-gateway serve` runs (same loop, same HTTP parser,
no access log, no server header), the same PUT path and bodies, and one fsync per body
before the 200 (a new file per body, written from a worker thread as the gateway does its
blocking work); no authentication, no crypto, no database. What it sustains on this machine
is the physical limit of the stack; ``ingest_limit.py`` reports ours as a share of it.

    BARE_DIR=/tmp/x .venv/bin/python tests/benchmarks/bare_endpoint.py PORT
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from fastapi import FastAPI, Request

app = FastAPI()
_DIR = Path(os.environ.get("BARE_DIR", "."))


@app.put("/v1/devices/{device_id}/sessions/{session_id}/chunks/{seq}")
async def put_chunk(device_id: str, session_id: str, seq: int, request: Request) -> dict:
    body = await request.body()
    await asyncio.to_thread(_durable, _DIR / f"{device_id}-{session_id}-{seq}", body)
    return {"session_id": session_id, "seq": seq, "duplicate": False}


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


def _durable(path: Path, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_keep_alive=75,
    )
