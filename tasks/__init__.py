"""Prefect tasks: one typed unit of work each, with retries, timeouts and cache keys declared here."""
