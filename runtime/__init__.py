"""What both programs need to run as processes, and nothing about audio or Blueprint.

One settings loader, one CLI error convention (and, as they come, logging and systemd
notification), shared so room-agent and room-gateway behave alike without importing
each other.
"""
