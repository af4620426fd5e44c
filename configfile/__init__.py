"""The one settings loader of room-agent and room-gateway (a TOML table + environment)."""

from configfile.loader import ConfigError, FileSettings, load_settings

__all__ = ["ConfigError", "FileSettings", "load_settings"]
