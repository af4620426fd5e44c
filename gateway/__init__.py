"""The gateway: the only holder of the Blueprint secrets; ingests room audio, relays notes."""
