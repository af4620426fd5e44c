"""The gateway's MQTT side: room state in, commands and notifications out."""
