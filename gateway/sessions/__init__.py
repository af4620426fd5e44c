"""A session's life at the gateway: states, Blueprint steps, webhooks, audio, notes."""
