import ctypes
import subprocess
import sys

import numpy as np
import pytest

from runtime.codec import CodecError, decode, encode

SPEECHLIKE = (np.random.default_rng(1).standard_normal(16_000 * 4) * 3000).astype(np.int16)


def test_flac_is_lossless():
    decoded = decode(encode(SPEECHLIKE, "flac"))
    assert decoded.sample_rate == 16_000
    assert np.array_equal(decoded.pcm, SPEECHLIKE)


@pytest.mark.parametrize("kbps", [16, 24, 48])
def test_opus_bitrate_and_length(kbps):
    data = encode(SPEECHLIKE, "opus", kbps)
    assert data[:4] == b"OggS"
    decoded = decode(data)
    assert decoded.duration_s == pytest.approx(4.0, abs=0.05)
    assert len(data) * 8 / 4 / 1000 == pytest.approx(kbps, rel=0.35)


@pytest.mark.parametrize("data", [b"", b"garbage" * 20, b"fLaC" + b"\0" * 100])
def test_undecodable(data):
    with pytest.raises(CodecError):
        decode(data)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "prctl"), reason="no prctl")
def test_works_under_memory_deny_write_execute():
    """The units set MemoryDenyWriteExecute=yes; PR_SET_MDWE applies the same rule."""
    code = (
        "import ctypes, numpy as np\n"
        "assert ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) == 0, 'PR_SET_MDWE unsupported'\n"
        "from runtime.codec import encode, decode\n"
        "x = np.arange(16000, dtype=np.int16)\n"
        "assert (decode(encode(x, 'flac')).pcm == x).all()\n"
        "decode(encode(x, 'opus'))\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "PR_SET_MDWE unsupported" in result.stderr:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert result.stdout.strip() == "ok", result.stderr
