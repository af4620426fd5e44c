"""What people in the room see and hear: an indicator driven by the agent's state, short
cues, a button, and event hooks (agent/feedback/hub.py wires them)."""
