"""The ``scheduler`` command line: one click group, one module per verb family.

Every command turns expected failures (bad config, unreachable database or
broker, bad input files) into a one-line error and a non-zero exit, never a
traceback: ``ConfigError`` and friends are caught in :func:`main`.
"""

from __future__ import annotations

import atexit
import io
import os
import sys
import threading
from typing import NoReturn

import click

from scheduler.cli.common import CliError, cli, terminal_safe


def main() -> None:
    """Console-script entry point."""
    _discard_closed_streams()
    _guard_standard_output()
    try:
        cli.main(standalone_mode=False)
        code: str | int | None = 0
    except SystemExit as exc:
        code = exc.code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except CliError as exc:
        click.echo(f"error: {terminal_safe(str(exc))}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = 130
    except StandardOutputError as exc:
        _say(f"error: standard output: {exc.strerror or exc}")
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - said once: leave() must not flush into it again
        code = 120
    leave(code)


class StandardOutputError(OSError):
    """A write to standard output failed (a full disk, a device error): the command cannot report."""


class _GuardedOutput(io.TextIOWrapper):
    """Standard output whose failed writes say that it was standard output that failed.

    Why: a command writing more than the stream's buffer (``tasks --json``,
    ``nodes list`` of a large fleet, ``simulate --json``) met a full disk in
    the middle of its output, not at the final flush that :func:`leave`
    guards, and the ``OSError`` was a traceback, whose frames do not say
    which stream failed. A reader gone (``BrokenPipeError``) is left as it
    is: click ends the command for it.
    """

    def write(self, text: str) -> int:
        try:
            return super().write(text)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StandardOutputError(exc.errno, exc.strerror) from None

    def flush(self) -> None:  # rich flushes after each print
        try:
            super().flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise StandardOutputError(exc.errno, exc.strerror) from None


_REPLACED: list[object] = []
"""The stream :func:`_guard_standard_output` replaced: kept, because collecting it would close the buffer
that the guarded stream writes to."""


def _guard_standard_output() -> None:
    """Put a :class:`_GuardedOutput` over standard output's buffer, with the stream's own settings."""
    out = sys.stdout
    if type(out) is not io.TextIOWrapper:  # replaced already (a test runner, a closed stream's devnull)
        return
    out.flush()
    _REPLACED.append(out)
    sys.stdout = _GuardedOutput(
        out.buffer,
        encoding=out.encoding,
        errors=out.errors,
        line_buffering=out.line_buffering,
        write_through=out.write_through,
    )


def _discard_closed_streams() -> None:
    """Give a standard stream closed when the process started (``>&-``, ``2>&-``) ``os.devnull``.

    Python leaves such a stream None, and commands call ``isatty()`` and
    ``write()`` on it: ``submit --file x 2>&-`` failed on ``None.isatty()``
    before publishing, ``strategies --json >&-`` on ``None.write()``. A
    closed stream means "discard this output": so it is, as a shell's
    ``>/dev/null`` would have it.
    """
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - the process's own stream, never closed


def leave(code: str | int | None) -> NoReturn:
    """End the process with ``code`` (what ``sys.exit`` takes) without the interpreter's teardown.

    Why: a command is done once its output is flushed and the exit handlers
    have run, but a normal exit then frees every object of every module the
    command imported (pydantic, SQLAlchemy, pika...): about 60 ms, a fifth of
    a ``scheduler submit``. What a normal exit does that matters is kept and
    done here, in its order: threads that are not daemons are waited for
    (when one is still running, this falls back to a normal exit, which
    joins it), the exit handlers run (logging's flush, ``weakref.finalize``
    clean-ups), the standard streams are flushed, and a closed pipe on
    standard output is exit status 120, as Python reports it. An exit code
    that is a text is printed to standard error with status 1, as
    ``sys.exit`` does.

    A standard stream whose descriptor was closed when the process started
    (``>&-``, ``2>&-``, a supervisor's) is None in ``sys``: there is nothing
    to flush, and the command succeeded as a normal exit says. Standard
    output that cannot be written for another reason (a full disk) is one
    line on standard error and status 120, where a normal exit prints
    Python's own message: never a traceback.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if others:
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        if sys.stderr is not None:
            print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError) as exc:  # a reader that went away, a full disk, a stream closed
            if stream is sys.stdout and status == 0:
                status = 120
            if stream is sys.stdout and isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError):
                _say(f"error: standard output: {exc.strerror or exc}")
    os._exit(status)


def _say(line: str) -> None:
    """``line`` on standard error, if it can be written at all (it may be closed or full as well)."""
    try:
        if sys.stderr is not None:
            print(line, file=sys.stderr)
    except (OSError, ValueError):
        pass


__all__ = ["cli", "leave", "main"]
