"""The gateway: the only holder of the Blueprint secrets; ingests room audio, relays notes."""

__version__ = "0.1.0"
