"""The gateway's out-of-the-box Blueprint: one on this host, with development credentials.

They are what `room-gateway serve` uses when nothing is configured, so the demo and the
tests run against the Blueprint simulator (devtools/simulator, which takes them as its own
defaults); `config validate` refuses them for a real deployment. The gateway owns them:
the service never imports the simulator to learn its own defaults.
"""

DEFAULT_PORT = 8090
DEFAULT_API_KEY = "sim-api-key"
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"
