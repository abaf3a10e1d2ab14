"""Logging setup: structlog JSON lines (console on a TTY) with secrets masked.

``configure_logging`` is called once, from the CLI; nothing here configures anything
at import time.
"""

from __future__ import annotations

import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "redact"]

_SECRET_KEYS = frozenset(
    {
        "token",
        "access_token",
        "assertion",
        "client_assertion",
        "authorization",
        "dpop",
        "proof",
        "api_token",
        "password",
        "dsn",
        "private_key",
        "secret",
        "d",
    }
)
_SECRET_TEXT = re.compile(
    r"(?i)\b(bearer|ssws|dpop)\s+[A-Za-z0-9._~+/=-]{8,}|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)


# A password inside a PostgreSQL URI (postgresql://user:PASSWORD@host, ?password=...).
_DSN_PASSWORD = re.compile(r"(?i)(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*(@)|([?&]password=)[^&\s]*")


def redact(text: str) -> str:
    """Mask bearer/SSWS credentials, JWTs and DSN passwords inside free text."""
    text = _SECRET_TEXT.sub(
        lambda m: f"{m.group(1)} [redacted]" if m.group(1) else "[redacted-jwt]", text
    )
    return _DSN_PASSWORD.sub(
        lambda m: (
            f"{m.group(1)}[redacted]{m.group(2)}" if m.group(1) else f"{m.group(3)}[redacted]"
        ),
        text,
    )


def _redact_processor(
    _logger: object, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event.items()):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            event[key] = redact(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once, from the CLI: JSON lines unless on a TTY (or asked)."""
    import logging  # noqa: PLC0415

    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_processor,
        structlog.processors.format_exc_info,
    ]
    # Libraries log through stdlib logging (aiohttp, asyncio): the same lines, the same
    # format, the same redaction; never logging's plain-text last-resort handler.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.getLevelNamesMapping()[level.upper()], logging.WARNING))
    logging.captureWarnings(True)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
