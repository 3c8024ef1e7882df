"""Signed webhooks: the outbox dispatcher, signatures, the callback URL policy, the delivery state.

``WebhookDispatcher`` runs next to the worker on the leader and delivers
outbox events; ``verify`` is for receivers written in Python; the delivery
rows are read and revived through ``DeliveryStore`` (``scheduler webhooks``).
Nothing here opens a connection or starts a thread at import time.
"""

from scheduler.webhooks.backoff import backoff_delay, retry_schedule
from scheduler.webhooks.deliveries import DeliveryRecord, DeliveryStore
from scheduler.webhooks.dispatcher import DispatcherStats, WebhookDispatcher
from scheduler.webhooks.policy import callback_refusal, display_url
from scheduler.webhooks.signing import SignatureError, signature, signed_headers, verify

__all__ = [
    "DeliveryRecord",
    "DeliveryStore",
    "DispatcherStats",
    "SignatureError",
    "WebhookDispatcher",
    "backoff_delay",
    "callback_refusal",
    "display_url",
    "retry_schedule",
    "signature",
    "signed_headers",
    "verify",
]
