"""Log lines escape control characters, so request fields cannot forge or recolour log lines.

A client chooses paths, headers, model names and prompts; any of them may reach a log line.
``install_log_sanitizer()`` puts a log-record factory in place that escapes, in every record
of every logger (gptserve's, uvicorn's access and error logs, libraries'), the message and
its arguments, and the message lines of a logged exception: C0 controls (CR, LF, ESC, TAB …),
DEL, C1 controls (NEL, CSI …), the Unicode line and paragraph separators and the bidi
overrides become ``\\n``, ``\\x1b``, ``\\u2028`` and so on. A traceback keeps its own line
breaks; only the exception's message in it is escaped. Arguments keep their type where they
are safe (numbers, clean strings), so formatters that read ``record.args`` (uvicorn's access
formatter does) still work.
"""
from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_control_chars(text: str) -> str:
    """``text`` with every control or line-breaking character written as an escape."""
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _escape_arg(arg: object) -> object:
    if isinstance(arg, str):
        return escape_control_chars(arg)
    if arg is None or isinstance(arg, (int, float, bytes)):  # bytes print as their (escaped) repr
        return arg
    text = str(arg)
    return escape_control_chars(text) if _UNSAFE.search(text) else arg


def format_exception(exc: BaseException) -> str:
    """Like ``logging.Formatter.formatException``, with each exception's message escaped."""
    parts: list[str] = []
    seen: set[int] = set()

    def walk(exc: BaseException) -> None:
        seen.add(id(exc))
        if exc.__cause__ is not None and id(exc.__cause__) not in seen:
            walk(exc.__cause__)
            parts.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif exc.__context__ is not None and not exc.__suppress_context__ and id(exc.__context__) not in seen:
            walk(exc.__context__)
            parts.append("\nDuring handling of the above exception, another exception occurred:\n\n")
        if exc.__traceback__ is not None:
            parts.append("Traceback (most recent call last):\n")
            parts.extend(traceback.format_tb(exc.__traceback__))
        parts.extend(escape_control_chars(line.rstrip("\n")) + "\n"
                     for line in traceback.format_exception_only(type(exc), exc))

    walk(exc)
    return "".join(parts).rstrip("\n")


def sanitize_record(record: logging.LogRecord) -> logging.LogRecord:
    record.msg = _escape_arg(record.msg)
    if isinstance(record.args, Mapping):
        record.args = {key: _escape_arg(value) for key, value in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_escape_arg(arg) for arg in record.args)
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        record.exc_text = format_exception(record.exc_info[1])
    return record


def install_log_sanitizer() -> None:
    """Escape control characters in every log record from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "is_gptserve_sanitizer", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        return sanitize_record(factory(*args, **kwargs))

    make_record.is_gptserve_sanitizer = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(make_record)
