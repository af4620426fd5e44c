"""The technician's tools: mic check and levels, `status` (its snapshot file, the probes,
the findings), `doctor`, and `config validate`. They read; they never disturb a running agent."""
