"""What the room agent and the gateway agree on, and nothing else: no I/O, no threads."""
