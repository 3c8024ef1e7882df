"""The AMQP header names the service writes and reads, apart from any AMQP client.

Why a module of its own: the planning (:mod:`scheduler.worker.batch`) and the
redelivery count read these headers, and they must stay importable without
pika (the planning core does no I/O); :mod:`scheduler.broker` re-exports them.
"""

HEADER_SCHEMA = "x-schema-version"
HEADER_ATTEMPT = "x-attempt"
HEADER_DEATH_REASON = "x-death-reason"
HEADER_ORIGINAL_SIZE = "x-original-size"
HEADER_DELIVERY_COUNT = "x-delivery-count"
"""Set by quorum queues on a redelivery: how many times the message was returned before."""
HEADER_PUBLISHED_AT = "x-published-at-ms"
"""Unix milliseconds of the first publish (AMQP tables carry no floats); kept across retries."""

__all__ = [
    "HEADER_ATTEMPT",
    "HEADER_DEATH_REASON",
    "HEADER_DELIVERY_COUNT",
    "HEADER_ORIGINAL_SIZE",
    "HEADER_PUBLISHED_AT",
    "HEADER_SCHEMA",
]
