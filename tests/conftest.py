"""Settings for the whole test session."""

import os

# Never read a real installation's credentials (/etc/room-audio/credentials) in tests.
os.environ["ROOM_AUDIO_CREDENTIALS"] = "/nonexistent/room-audio-credentials"
