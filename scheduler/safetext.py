"""Text and JSON that every database and every JSON parser accepts, whatever arrived.

Why this exists: a message body is attacker-controlled, and Python's ``json``
is lenient where the databases are strict. ``json.loads`` turns ``"\\ud800"``
into a lone surrogate (which neither PostgreSQL nor SQLite can encode as
UTF-8), accepts ``NaN``/``Infinity`` and turns ``1e400`` into ``inf`` (none of
which is JSON), and a key may hold a NUL (PostgreSQL refuses NUL in text).
Everything the service stores or sends passes through here first:

* :func:`printable` for human messages: control characters and lone
  surrogates become visible escapes, so a log line or a ``message`` column
  never carries a terminal escape, a NUL or an unencodable code point;
* :func:`loads` parses leniently but yields only finite numbers (special
  constants stay the strings they were written as) and strings without lone
  surrogates;
* :func:`dumps` writes compact, strict JSON (``allow_nan=False``).

Pure: no I/O, only the standard library.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters but tab, C1 controls and lone surrogates."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x00``), cut to ``limit``."""
    if limit is not None and len(text) > limit:
        text = text[:limit]
    return _UNSAFE.sub(_escape, text) if _UNSAFE.search(text) else text


def scrub(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (it can then be encoded as UTF-8)."""
    return _SURROGATE.sub(REPLACEMENT, text) if _SURROGATE.search(text) else text


def _constant(name: str) -> str:
    return name  # NaN, Infinity, -Infinity stay what was written, as strings


def _number(text: str) -> float | str:
    value = float(text)
    return value if math.isfinite(value) else text


def clean(value: Any) -> Any:
    """A parsed JSON value with lone surrogates scrubbed from every string, keys included."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {scrub(k): clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def loads(text: str | bytes) -> Any:
    """Parse JSON into values :func:`dumps` can always write (see the module docstring).

    Raises ``ValueError`` (malformed, or an integer beyond Python's digit
    limit) or ``RecursionError`` (nested too deeply), like ``json.loads``.
    """
    return clean(json.loads(text, parse_constant=_constant, parse_float=_number))


def dumps(value: Any) -> str:
    """Compact strict JSON; non-ASCII kept as UTF-8, lone surrogates already scrubbed by :func:`clean`."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def strict_json_text(text: str) -> str | None:
    """``text`` re-serialised as strict JSON, or None when it is not JSON at all."""
    try:
        return dumps(loads(text))
    except (ValueError, RecursionError):
        return None


def is_clean(text: str) -> bool:
    """True when ``text`` holds no NUL and no lone surrogate (storable in both databases)."""
    return "\x00" not in text and _SURROGATE.search(text) is None
