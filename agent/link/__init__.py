"""The agent's link to the gateway: the uplink (sealed chunks over HTTPS) and the control
link (MQTT: commands in; state, events and heartbeats out)."""
