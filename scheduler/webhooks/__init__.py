"""Signed webhooks: the outbox dispatcher, Standard Webhooks signatures, the callback URL policy.

``WebhookDispatcher`` runs next to the worker on the leader and delivers
outbox events, signed per the Standard Webhooks specification (receivers
verify with any Standard Webhooks library); the delivery rows live in
:mod:`scheduler.store.deliveries` (``scheduler webhooks``). Nothing here
opens a connection or starts a thread at import time.

The names below are imported on first use (PEP 562): the configuration
validates webhook URLs and secrets with :mod:`scheduler.webhooks.policy` and
:mod:`scheduler.webhooks.signing`, and must not pay for the dispatcher, the
store and SQLAlchemy when a CLI command only loads the settings.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler.store.deliveries import DeliveryRecord, DeliveryStore
    from scheduler.webhooks.attempt import strict_json_problem
    from scheduler.webhooks.backoff import backoff_delay, retry_schedule
    from scheduler.webhooks.dispatcher import DispatcherStats, WebhookDispatcher
    from scheduler.webhooks.policy import callback_refusal, display_url
    from scheduler.webhooks.signing import (
        SecretFormatError,
        decode_secret,
        new_secret,
        signature,
        signed_headers,
        unsigned_refusal,
    )

_HOMES: dict[str, str] = {
    "DeliveryRecord": "scheduler.store.deliveries",
    "DeliveryStore": "scheduler.store.deliveries",
    "backoff_delay": "scheduler.webhooks.backoff",
    "retry_schedule": "scheduler.webhooks.backoff",
    "DispatcherStats": "scheduler.webhooks.dispatcher",
    "WebhookDispatcher": "scheduler.webhooks.dispatcher",
    "strict_json_problem": "scheduler.webhooks.attempt",
    "callback_refusal": "scheduler.webhooks.policy",
    "display_url": "scheduler.webhooks.policy",
    "SecretFormatError": "scheduler.webhooks.signing",
    "decode_secret": "scheduler.webhooks.signing",
    "new_secret": "scheduler.webhooks.signing",
    "signature": "scheduler.webhooks.signing",
    "signed_headers": "scheduler.webhooks.signing",
    "unsigned_refusal": "scheduler.webhooks.signing",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


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
