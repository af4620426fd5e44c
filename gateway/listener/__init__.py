"""The gateway's HTTP listener under slow, idle and numerous clients (issue 10): request
deadlines and a connection cap uvicorn does not have, a descriptor limit to match, and
log lines that do not multiply under attack."""
