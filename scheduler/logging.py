"""structlog set-up: JSON lines for machines, readable lines for people.

``format: auto`` picks JSON when stderr is not a terminal (containers, CI,
log shippers) and the console renderer when it is. Standard-library logging
(pika, SQLAlchemy, uvicorn) goes through the same renderer so a log stream
has one shape.

JSON lines of the scheduler's own events are serialised with orjson and
written as bytes: a decision line is on the worker's hot path, and orjson
plus a bytes logger take about half the time of ``json.dumps`` plus a text
stream (measured with ``bench/profile_worker.py``; the standard-library
path keeps ``json.dumps``, its formatter must return text). The lines are
compact (``{"event":"decision",...}``); any JSON reader takes both shapes.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog

from scheduler.config import LoggingConfig


def configure_logging(cfg: LoggingConfig) -> None:
    """Configure structlog and the stdlib root logger once, at process start."""
    level = getattr(logging, cfg.level.upper())
    as_json = cfg.format == "json" or (cfg.format == "auto" and not sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    own_renderer: structlog.types.Processor = renderer
    logger_factory: structlog.types.WrappedLogger = structlog.WriteLoggerFactory(sys.stderr)
    if as_json:
        # Anything orjson cannot encode natively goes through str(), as json.dumps(default=...) did.
        own_renderer = structlog.processors.JSONRenderer(
            serializer=orjson.dumps, option=orjson.OPT_NON_STR_KEYS, default=_fallback
        )
        sys.stderr.flush()
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    # The scheduler's own events skip the stdlib logging machinery and are
    # rendered and written directly: one log line per decision is on the hot
    # path, and the stdlib round trip doubled its cost.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, own_renderer],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries are chatty at INFO about things the scheduler already logs
    # (uvicorn: its start-up lines; the HTTP server logs its own "http serving").
    for noisy in ("pika", "sqlalchemy.engine", "alembic", "httpx", "kubernetes", "urllib3", "uvicorn"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _fallback(value: object) -> str:
    """orjson's ``default``: objects it has no encoding for (enums of other kinds, paths...) as text."""
    return str(value)
