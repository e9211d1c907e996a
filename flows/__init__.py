"""Prefect flows: orchestration only — which tasks, in what order."""
