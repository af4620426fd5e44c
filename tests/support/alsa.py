"""A real capture device without a sound card: the ALSA `file` plugin, fed from a file or FIFO.

The implementation ships in the package (devtools/demo/microphone.py), because `room-gateway
demo` captures through it too; its docstring lists the plugin's gotchas.
"""

from pathlib import Path

from devtools.demo.microphone import (
    PCM_NAME,
    PERIOD_FRAMES,
    SAMPLE_BYTES,
    FifoFeeder,
    pcm_bytes,
    write_asound_conf,
    write_raw,
)

__all__ = [
    "PCM_NAME",
    "PERIOD_FRAMES",
    "SAMPLE_BYTES",
    "FifoFeeder",
    "add_speaker",
    "pcm_bytes",
    "write_asound_conf",
    "write_raw",
]
SPEAKER = "testout"


def add_speaker(config: Path, outfile: Path, name: str = SPEAKER) -> str:
    """Add to an ALSA config (write_asound_conf's) an output PCM ``name`` whose played
    frames land, raw s16le, in ``outfile``; returns the name to give as the device."""
    body = config.read_text() if config.exists() else "pcm.null { type null }\n"
    speaker = (
        f"pcm.{name} {{\n"
        "    type file\n"
        '    slave.pcm "null"\n'
        f'    file "{outfile}"\n'
        '    format "raw"\n'
        "}\n"
    )
    if "pcm.default" not in body:
        body += f"pcm.default {name}\n"
    config.write_text(body + speaker)
    return name
