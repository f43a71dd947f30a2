"""Builds the notifier from the settings and starts its delivery loop; both are closed
through the container's exit stack (the loop stops before the engine is disposed)."""

from __future__ import annotations

from contextlib import AsyncExitStack

from sqlalchemy.ext.asyncio import AsyncEngine

from app.notify.delivery import DeliveryLoop, DeliveryPolicy, OutboxNotifier
from app.notify.outbox import SqlOutbox
from app.settings import Settings


def delivery_policy_from(settings: Settings) -> DeliveryPolicy:
    return DeliveryPolicy(
        max_attempts=settings.notify_max_attempts,
        timeout_seconds=settings.notify_timeout_seconds,
        inline_timeout_seconds=settings.notify_inline_timeout_seconds,
    )


async def build_notifier(
    settings: Settings, engine: AsyncEngine, stack: AsyncExitStack, *, start_loop: bool = True
) -> OutboxNotifier | None:
    """None when MAIN_SERVICE_NOTIFY_URL is unset: then no event is ever written."""
    if not settings.main_service_notify_url or settings.main_service_notify_secret is None:
        return None
    # Imported here: without a webhook URL the process never loads httpx (~2 MB).
    from app.notify.sender import WebhookSender, new_http_client

    client = new_http_client()
    stack.push_async_callback(client.aclose)
    sender = WebhookSender(
        client,
        settings.main_service_notify_url,
        settings.main_service_notify_secret.get_secret_value().encode(),
    )
    notifier = OutboxNotifier(SqlOutbox(engine), sender, delivery_policy_from(settings))
    if start_loop and settings.notify_delivery_loop:
        loop = DeliveryLoop(
            notifier.deliver_due,
            interval_seconds=settings.notify_poll_interval_seconds,
            batch_size=notifier.policy.batch_size,
        )
        loop.start()
        stack.push_async_callback(loop.stop)
    return notifier
