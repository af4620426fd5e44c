"""The gateway: the only holder of the Blueprint secrets; ingests room audio, relays notes."""

CONFIG_ENV = "ROOM_GATEWAY_CONFIG"  # the settings file, when --config is not given
