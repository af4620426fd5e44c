"""Blueprint partner API as the gateway uses it: the client, its models and paths, webhook
signatures, and the out-of-the-box defaults. The simulator lives in devtools/simulator."""

from gateway.blueprint.client import (
    BlueprintClient,
    BlueprintError,
    BlueprintRejected,
    BlueprintUnavailable,
)

__all__ = ["BlueprintClient", "BlueprintError", "BlueprintRejected", "BlueprintUnavailable"]
