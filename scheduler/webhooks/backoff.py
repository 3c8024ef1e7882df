"""The retry schedule of webhook deliveries: capped exponential backoff with equal jitter.

Why equal jitter (half the delay fixed, half random) and not full jitter
(anywhere from zero): full jitter spreads retries best, but it can retry a
struggling receiver almost at once, and it makes the schedule impossible to
document. Equal jitter still breaks up the thundering herd after an outage
(every delivery that failed together retries at a different moment) while
guaranteeing at least half of the nominal delay.

Attempt ``n`` failing schedules attempt ``n + 1`` after
``min(initial * 2^(n-1), max)`` seconds, jittered into [half, full]; after
``max_attempts`` failed attempts the delivery is dead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from scheduler.config import WebhooksConfig


def nominal_delay(attempts: int, initial: float, maximum: float) -> float:
    """The delay after ``attempts`` failed attempts, before jitter: ``min(initial * 2^(n-1), maximum)``."""
    exponent = max(0, min(attempts - 1, 64))  # 2^64 * any sane initial is past any cap
    return float(min(initial * (2.0**exponent), maximum))


def backoff_delay(attempts: int, initial: float, maximum: float, rng: random.Random) -> float:
    """The jittered delay before the next attempt, in [nominal / 2, nominal] (equal jitter)."""
    nominal = nominal_delay(attempts, initial, maximum)
    return nominal / 2 + rng.uniform(0, nominal / 2)


@dataclass(frozen=True, slots=True)
class ScheduleStep:
    """One row of the retry table: after attempt ``attempt`` fails, wait ``low``..``high`` seconds."""

    attempt: int
    nominal: float
    low: float
    high: float
    elapsed_low: float
    elapsed_high: float


def retry_schedule(config: WebhooksConfig) -> list[ScheduleStep]:
    """Every wait between attempts for ``config``, with the cumulative time since the first attempt.

    The table in ``docs/webhooks.md`` is this function's output for the
    default configuration (request time not counted).
    """
    steps: list[ScheduleStep] = []
    low_total = high_total = 0.0
    for attempt in range(1, config.max_attempts):
        nominal = nominal_delay(attempt, config.initial_backoff, config.max_backoff)
        low_total += nominal / 2
        high_total += nominal
        steps.append(ScheduleStep(attempt, nominal, nominal / 2, nominal, low_total, high_total))
    return steps
