"""One webhook attempt: a signed POST within one deadline, and how what it came to is classified.

:func:`post` makes the attempt on a sender thread. Resolving, connecting,
sending and reading together end within ``webhooks.timeout``
(:func:`~scheduler.webhooks.transport.deadline`), so a receiver trickling
its answer cannot hold a sender; only the start of a body is read, and at
most ``DRAIN_BYTES`` of it. :class:`Classifier` turns the :class:`Attempt`
into the delivery row's update on the dispatcher thread: delivered, retry
(backoff, or ``Retry-After`` when longer) or dead.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import structlog

from scheduler.config import WebhooksConfig
from scheduler.store.deliveries import DEAD, DELIVERED, PENDING, Due, Result
from scheduler.webhooks.backoff import backoff_delay
from scheduler.webhooks.policy import display_url, scrub
from scheduler.webhooks.signing import SigningKey, signed_headers
from scheduler.webhooks.transport import deadline, refused_address

log = structlog.get_logger(__name__)

SNIPPET_BYTES = 512  # of a failed response's body, for last_error
DRAIN_BYTES = 64 * 1024  # read at most this much of any response (more: drop the connection)
LOG_EVERY = 10.0  # seconds between failure lines for one URL (the rest are counted)


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one HTTP attempt came to, before it is turned into a row update."""

    delivered: bool = False
    sent: bool = True
    status_code: int | None = None
    error: str | None = None
    refusal: str | None = None
    invalid: str | None = None
    retry_after: float | None = None
    seconds: float = 0.0


def post(
    due: Due,
    client: httpx.Client,
    keys: Sequence[SigningKey],
    timeout: float,
    now: Callable[[], datetime],
) -> Attempt:
    """One signed POST of ``due`` with ``client``, all within ``timeout`` seconds; what it came to.

    A payload that is not strict JSON is not sent (``invalid``); an address
    the transport's guard refuses is not sent either (``refusal``); a 2xx is
    delivered; anything else is an ``error``, with the receiver's
    ``Retry-After`` when it gave one. Redirects are never followed.
    """
    invalid = strict_json_problem(due.payload)
    if invalid is not None:
        return Attempt(sent=False, invalid=invalid)
    body = due.payload.encode("utf-8")
    timestamp = int(now().timestamp())
    headers = signed_headers(
        keys, event_type=due.event_type, event_id=due.event_id, body=body, timestamp=timestamp
    )
    started = time.perf_counter()
    try:
        with (
            deadline(timeout),
            client.stream("POST", due.url, content=body, headers=headers) as response,
        ):
            code = response.status_code
            retry_after = _retry_after(response)
            location = response.headers.get("location")
            snippet = _read_some(response)
    except httpx.HTTPError as exc:
        seconds = time.perf_counter() - started
        refused = refused_address(exc)
        if refused is not None:
            return Attempt(sent=False, refusal=scrub(refused, due.url), seconds=seconds)
        return Attempt(error=scrub(_describe(exc, timeout), due.url), seconds=seconds)
    except (httpx.InvalidURL, ValueError) as exc:
        refusal = scrub(f"invalid URL: {exc}", due.url)
        return Attempt(sent=False, refusal=refusal, seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if 200 <= code < 300:
        return Attempt(delivered=True, status_code=code, seconds=seconds)
    error = f"HTTP {code}"
    if 300 <= code < 400:
        target = f" to {display_url(location)}" if location else ""
        error += f": redirect{target} not followed"
    elif snippet:
        error += f": {snippet}"
    error = scrub(error, due.url)
    return Attempt(status_code=code, error=error, retry_after=retry_after, seconds=seconds)


class Classifier:
    """Turns what an attempt came to into its row update, and counts and logs it.

    Delivered on a 2xx; dead when the payload is not strict JSON, the
    callback is refused, or the last of ``max_attempts`` failed; otherwise
    pending again after the backoff (:func:`~scheduler.webhooks.backoff.
    backoff_delay`), or the receiver's ``Retry-After`` when that is longer
    (capped at ``max_backoff``). An attempt not sent (no longer leading,
    stopping, or a claim handed back) is pending and due at once. ``count``
    adds to the dispatcher's counters; failures are logged at most once per
    URL and kind every ``LOG_EVERY`` seconds.
    """

    def __init__(self, config: WebhooksConfig, rng: random.Random, count: Callable[..., None]) -> None:
        self.config = config
        self._rng = rng
        self._count = count
        self._log_state: dict[tuple[str, str], tuple[float, int]] = {}

    def result_of(self, due: Due, attempt: Attempt, now: datetime) -> Result:
        """The row update for ``due`` after ``attempt``: delivered, pending (retry or hand back), or dead."""
        cfg = self.config
        ctx = {
            "delivery_id": due.id,
            "event_id": due.event_id,
            "task_id": due.task_id,
            "type": due.event_type,
            "url": display_url(due.url),
            "status": attempt.status_code,
        }
        if attempt.delivered:
            self._count(attempts=1, delivered=1)
            ms = round(attempt.seconds * 1000, 1)
            log.debug("webhook delivered", attempt=due.attempts + 1, ms=ms, **ctx)
            return Result(due.id, DELIVERED, True, now, status_code=attempt.status_code, delivered_at=now)
        if attempt.invalid is not None:
            self._count(dead=1, invalid=1)
            log.error(
                "webhook payload is not strict JSON; delivery dead, nothing sent",
                problem=attempt.invalid,
                **ctx,
            )
            return Result(due.id, DEAD, False, now, error=f"invalid payload: {attempt.invalid}")
        if attempt.refusal is not None:
            self._count(refused=1, dead=1)
            log.warning("webhook callback refused; delivery dead", reason=attempt.refusal, **ctx)
            return Result(due.id, DEAD, False, now, error=f"refused: {attempt.refusal}")
        if not attempt.sent:
            self._count(handed_back=1)  # not leading any more, or stopping: due again at once
            return Result(due.id, PENDING, False, now)
        attempts = due.attempts + 1
        if attempts >= cfg.max_attempts:
            self._count(attempts=1, dead=1)
            self._log(
                log.error,
                "webhook delivery dead: giving up",
                due.url,
                attempts=attempts,
                error=attempt.error,
                **ctx,
            )
            return Result(due.id, DEAD, True, now, status_code=attempt.status_code, error=attempt.error)
        delay = backoff_delay(attempts, cfg.initial_backoff, cfg.max_backoff, self._rng)
        if attempt.retry_after is not None:
            delay = max(delay, min(attempt.retry_after, cfg.max_backoff))
        self._count(attempts=1, retried=1)
        self._log(
            log.warning,
            "webhook attempt failed; will retry",
            due.url,
            attempt=attempts,
            of=cfg.max_attempts,
            retry_in=round(delay, 3),
            error=attempt.error,
            **ctx,
        )
        return Result(
            due.id,
            PENDING,
            True,
            now + timedelta(seconds=delay),
            status_code=attempt.status_code,
            error=attempt.error,
        )

    def _log(self, emit: Callable[..., object], event: str, target: str, **fields: object) -> None:
        """Log a failure, at most once per URL and kind every ``LOG_EVERY`` seconds, with what was held back.

        A receiver that is down fails every delivery to it: thousands of
        identical lines a minute would bury everything else. The first one
        is logged with its full context, then one line per interval says
        how many more there were.
        """
        key = (event, target)
        now = time.monotonic()
        last, held = self._log_state.get(key, (0.0, 0))
        if now - last < LOG_EVERY:
            self._log_state[key] = (last, held + 1)
            return
        self._log_state[key] = (now, 0)
        if held:
            fields["similar_not_logged"] = held
        emit(event, **fields)


def _read_some(response: httpx.Response) -> str:
    """The start of the body, as one short line; reads a little more so the connection can be reused.

    The status is already in: a body that stops, breaks or outlasts the
    deadline only ends the reading (the connection is then dropped), it
    does not turn a 2xx into a failure.
    """
    kept = bytearray()
    total = 0
    try:
        for chunk in response.iter_bytes():
            if len(kept) < SNIPPET_BYTES:
                kept += chunk[: SNIPPET_BYTES - len(kept)]
            total += len(chunk)
            if total > DRAIN_BYTES:
                break
    except httpx.HTTPError:
        pass
    return " ".join(kept.decode("utf-8", "replace").split())[:200]


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def strict_json_problem(payload: str) -> str | None:
    """None when ``payload`` is strict JSON (RFC 8259, UTF-8 encodable); otherwise what is wrong.

    Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` and
    lone surrogates (raw or escaped); receivers in other languages reject
    them, or worse, read them differently. The payload is written
    elsewhere; this is the last check before it leaves the process.
    """
    try:
        value = json.loads(payload, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        return f"not strict JSON: {str(exc)[:200]}"
    try:
        payload.encode("utf-8")
        if _SURROGATE_ESCAPE.search(payload):  # rare: only then pay for a second encoding
            json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "not strict JSON: a lone surrogate (not a Unicode character)"
    return None


_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta or HTTP date), if the receiver sent one; None for anything else.

    ASCII digits only: ``str.isdigit`` also takes superscripts (``²``, byte 0xB2
    in a latin-1 header), which ``float`` refuses, and the ``ValueError`` was
    taken for a bad URL: the delivery went dead, even after a 2xx. A header
    the receiver got wrong is ignored, never a reason to stop delivering.
    """
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when is None:  # some Pythons return None instead of raising
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _describe(exc: httpx.HTTPError, timeout: float) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timeout ({timeout:g} s)"
    if isinstance(exc, httpx.ReadTimeout):
        return f"read timeout ({timeout:g} s)"
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({timeout:g} s): {type(exc).__name__}"
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


__all__ = ["Attempt", "Classifier", "post", "strict_json_problem"]
