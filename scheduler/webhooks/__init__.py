"""Signed webhooks: the outbox dispatcher, Standard Webhooks signatures, the callback URL policy.

``WebhookDispatcher`` runs next to the worker on the leader and delivers
outbox events, signed per the Standard Webhooks specification (receivers
verify with any Standard Webhooks library); the delivery rows live in
:mod:`scheduler.store.deliveries` (``scheduler webhooks``). Nothing here
opens a connection or starts a thread at import time.
"""

from scheduler.store.deliveries import DeliveryRecord, DeliveryStore
from scheduler.webhooks.backoff import backoff_delay, retry_schedule
from scheduler.webhooks.dispatcher import DispatcherStats, WebhookDispatcher, strict_json_problem
from scheduler.webhooks.policy import callback_refusal, display_url
from scheduler.webhooks.signing import (
    SecretFormatError,
    decode_secret,
    new_secret,
    signature,
    signed_headers,
    unsigned_refusal,
)

__all__ = [
    "DeliveryRecord",
    "DeliveryStore",
    "DispatcherStats",
    "SecretFormatError",
    "WebhookDispatcher",
    "backoff_delay",
    "callback_refusal",
    "decode_secret",
    "display_url",
    "new_secret",
    "retry_schedule",
    "signature",
    "signed_headers",
    "strict_json_problem",
    "unsigned_refusal",
]
