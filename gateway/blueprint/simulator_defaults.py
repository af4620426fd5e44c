"""The simulator's embedded credentials and ids: the gateway's defaults, so `room-gateway
serve` and the demo work out of the box. Kept apart from simulator.py so that reading
them does not import FastAPI and the codecs."""

DEFAULT_PORT = 8090
DEFAULT_API_KEY = "sim-api-key"
DEFAULT_CLIENT_ID = "sim-client"
DEFAULT_CLIENT_SECRET = "sim-secret"
DEFAULT_PARTNER_ID = "5a1e0000-0000-4000-8000-000000000001"
DEFAULT_ORGANIZATION_ID = "5a1e0000-0000-4000-8000-000000000002"
DEFAULT_CLINIC_ID = "5a1e0000-0000-4000-8000-000000000003"
