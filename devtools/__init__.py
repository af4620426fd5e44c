"""What only development and the demo need: the Blueprint simulator and `room-gateway demo`.

Not part of the service: the gateway imports it only from its CLI (`simulator`, `demo`);
devtools may use the gateway and the agent, never the reverse."""
