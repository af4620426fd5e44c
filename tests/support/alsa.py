"""A real capture device without a sound card: the ALSA `file` plugin, fed from a file or FIFO.

The implementation ships in the package (devtools/demo/microphone.py), because `room-gateway
demo` captures through it too; its docstring lists the plugin's gotchas.
"""

from devtools.demo.microphone import (
    PCM_NAME,
    SAMPLE_BYTES,
    FifoFeeder,
    pcm_bytes,
    write_asound_conf,
    write_raw,
)

__all__ = ["PCM_NAME", "SAMPLE_BYTES", "FifoFeeder", "pcm_bytes", "write_asound_conf", "write_raw"]
