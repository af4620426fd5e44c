"""The whole system as deployed: the simulator for Blueprint, a gateway provisioned with
its own commands, mosquitto from broker-config's files, and the real room agent capturing
through PortAudio from the ALSA file plugin (a FIFO fed with synthetic speech)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import soundfile

from tests.gateway.conftest import blueprint_sim, sim  # noqa: F401  (shared fixtures)
from tests.support.alsa import PERIOD_FRAMES, FifoFeeder
from tests.support.speech import make_session

SPEED = 8  # the FIFO is fed at 8x real time: a 40 s session plays in 5 s


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """40 s of a therapy room: espeak-ng utterances between pauses, over room noise."""
    truth = make_session(tmp_path_factory.mktemp("speech") / "session.wav", 40, 20, seed=11)
    pcm, _ = soundfile.read(truth.path, dtype="int16")
    return pcm


@pytest.fixture
def feeder(tmp_path) -> Iterator[FifoFeeder]:
    with FifoFeeder(tmp_path / "mic.fifo", period_frames=PERIOD_FRAMES, speed=SPEED) as playing:
        yield playing
