"""Blueprint partner API: the client the gateway uses, webhook signatures, and a simulator.

The simulator (``gateway.blueprint.simulator``) is not imported here, so using the client
never pulls in the simulator's server-side code.
"""

from gateway.blueprint.client import (
    BlueprintClient,
    BlueprintError,
    BlueprintRejected,
    BlueprintUnavailable,
)

__all__ = ["BlueprintClient", "BlueprintError", "BlueprintRejected", "BlueprintUnavailable"]
