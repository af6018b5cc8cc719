"""Secrets never reach a log line: every log record is redacted as it is made.

Join-token secrets travel in announce URLs (`/announce/<secret>`,
`/t/<secret>/...`) and in `Authorization: Bearer` headers, so any library
that logs a URL, a request line or an exception about one (aiohttp's parser
error for an over-long request line quotes it; libtorrent's tracker alerts
name the URL) could print one. Filters on handlers or loggers miss records
of other loggers and handlers added later (pytest's, a library's own);
`install` wraps the log record factory instead, so each record's message,
exception text and stack text are redacted once, whoever logs it and
wherever it goes. Secrets registered with `add_secret` (the agent's own)
are removed wherever they appear.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

REDACTED = "<secret>"
_IN_URL = re.compile(r"(/(?:announce|scrape|t)/)[^/?#\s'\"\\]+")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\"\\,]+")
_TOKEN = re.compile(r"swarm1\.[0-9a-f]{40}\.[0-9a-f]{64}")
_known: set[str] = set()
_lock = threading.Lock()
_installed = False


def add_secret(secret: str) -> None:
    """Redact `secret` wherever it appears from now on (at least 16 characters)."""
    if len(secret) >= 16:
        with _lock:
            _known.add(secret)


def redact(text: str) -> str:
    text = _TOKEN.sub(REDACTED, text)
    text = _IN_URL.sub(r"\1" + REDACTED, text)
    text = _BEARER.sub(r"\1" + REDACTED, text)
    for secret in tuple(_known):
        text = text.replace(secret, REDACTED)
    return text


def escape_path(path: object) -> str:
    """A path for a log line: control characters (a newline in a file name) shown escaped."""
    return repr(str(path))[1:-1]


def install() -> None:
    """Redact every log record made in this process from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make = logging.getLogRecordFactory()

    def redacting_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(redacting_record)
