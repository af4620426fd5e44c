"""A Blueprint partner API simulator (app, state, processing): the embedded default for the
demo and the tests. Run it with `room-gateway simulator`."""
