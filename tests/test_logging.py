"""Log lines in JSON mode: one JSON object per line, in order, whatever the values and the source."""

from __future__ import annotations

import json
import subprocess
import sys

SNIPPET = """
import logging, pathlib, enum, structlog
from scheduler.config import LoggingConfig
from scheduler.logging import configure_logging

class Colour(enum.Enum):
    RED = 1  # an enum is logged as its value

configure_logging(LoggingConfig(level="info", format="json"))
log = structlog.get_logger("scheduler.test")
log.info("first", path=pathlib.Path("/tmp/x"), colour=Colour.RED, counts={1: 2}, text="é\\n\\"q\\"")
logging.getLogger("pika").warning("from the standard library %s", "pika")
log.debug("hidden at info")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("third")
log.info("fourth", n=4)
"""


def test_json_lines_from_structlog_and_the_standard_library_interleave_in_order() -> None:
    out = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, check=True)
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["first", "from the standard library pika", "third", "fourth"]
    first = lines[0]
    assert first["path"] == "/tmp/x" and first["colour"] == 1 and first["counts"] == {"1": 2}
    assert first["text"] == 'é\n"q"' and first["level"] == "info" and first["timestamp"].endswith("Z")
    assert "ValueError: boom" in lines[2]["exception"]
    assert lines[3]["n"] == 4
