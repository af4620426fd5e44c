"""The gateway's HTTP API: partner REST API, Blueprint's webhook receiver, health."""
