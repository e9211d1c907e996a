"""Webhook receiver: authenticates, de-duplicates, and turns lakeFS and CI calls into Prefect events."""

from lakeloop.webhooks._receiver import Deliveries, PrefectEvents, WebhookError, create_app

__all__ = ["Deliveries", "PrefectEvents", "WebhookError", "create_app"]
