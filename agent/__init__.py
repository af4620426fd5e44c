"""The room agent: captures a therapy room's speech and gets it, sealed, to the gateway."""

CONFIG_ENV = "ROOM_AGENT_CONFIG"  # the settings file, when --config is not given
