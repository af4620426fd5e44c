"""`room-gateway demo`: the whole system on one machine, driven as a partner would drive it.

One file per responsibility: run (the steps, failures, shutdown), stack (config, the
gateway's set-up commands, the processes), processes (children in their own process
groups, waits), signals (Ctrl-C and SIGTERM), microphone (the ALSA file plugin fed from a
FIFO, shared with the tests), speech and conversation (espeak-ng speech, shared with the
tests), partner (the partner API calls), progress (the live display), report (note and
timeline), privacy (no name on MQTT or in a log).
"""
