"""Reading a JSON-lines file (``submit --file``, ``plan --file``, ``simulate --requests``) line by line.

Pure (standard library only), so the simulator in the core reads traces the
same way the CLI reads request files.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import IO


def json_lines(stream: IO[bytes], limit: int | None = None) -> Iterator[tuple[int, str | None, str]]:
    """The non-blank lines of a JSON-lines stream: ``(number, text, "")`` or ``(number, None, problem)``.

    Read as bytes and decoded line by line, so one line that is not UTF-8 is
    that line's problem, not the file's: reading it as text failed at the
    first bad byte, anywhere in an 8 KiB chunk, and dropped every line after
    it (stdin, decoded with ``surrogateescape``, crashed instead). A UTF-8
    byte order mark before the first line (Windows editors) is skipped, a
    CR LF ending is one line ending, and a line longer than ``limit`` bytes is
    skipped without being held in memory whole (no limit: ``None``).
    """
    number = 0
    while True:
        # The line, CR LF, and one byte more to know it is too long.
        raw = stream.readline(-1 if limit is None else limit + 3)
        if not raw:
            return
        number += 1
        if limit is not None and not raw.endswith(b"\n") and len(raw) == limit + 3:
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield number, None, f"longer than {limit} bytes"
            continue
        content = raw[:-1] if raw.endswith(b"\n") else raw
        content = content[:-1] if content.endswith(b"\r") else content
        if number == 1 and content.startswith(codecs.BOM_UTF8):
            content = content[len(codecs.BOM_UTF8) :]
        if not content.strip():
            continue
        if limit is not None and len(content) > limit:
            yield number, None, f"longer than {limit} bytes"
            continue
        try:
            yield number, content.decode("utf-8"), ""
        except UnicodeDecodeError as exc:
            byte = content[exc.start : exc.start + 1].hex()
            yield number, None, f"not UTF-8 (byte 0x{byte} at column {exc.start + 1})"
