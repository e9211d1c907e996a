"""The embedded stack: lakeFS-compatible server, OpenBao launcher, Prefect server launcher."""
