"""The simulator's tests use the same real servers as the Blueprint client's tests: the
simulator as a `room-gateway simulator` subprocess and a webhook receiver."""

from tests.gateway.blueprint.conftest import (  # noqa: F401  (shared fixtures)
    anyio_backend,
    make_audio,
    receiver,
    sim,
    simulator_service,
)
