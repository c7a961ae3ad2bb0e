"""Logging for ``connector-bridge run``: plain text (default) or JSON lines, secrets masked.

``BRIDGE_LOG_FORMAT=text`` gives ``2025-01-31 12:00:00,123 INFO    bridge: bridge ready``;
``json`` gives one JSON object a line, for log collectors (Loki, Elasticsearch, journald
with a JSON parser)::

    {"time": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "bridge",
     "message": "bridge ready", "thread": "bridge-startup"}

(shown on two lines here, one line in the log)

plus ``"exception"`` (the traceback as text) when there is one. Whatever the format,
every secret the settings hold (the Connector access key, the broker password) is
replaced by ``***`` in the final line: the parts already keep secrets out of their
messages, this is the second line of defence (an exception text quoting a header, a
third-party library's debug line).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import datetime, timezone

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
MASK = "***"


class _Redacting(logging.Formatter):
    """A formatter whose every line has the secrets masked."""

    def __init__(self, secrets: Iterable[str], fmt: str | None = None) -> None:
        super().__init__(fmt)
        # Longest first, so a secret containing another is masked whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class TextFormatter(_Redacting):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(secrets, TEXT_FORMAT)


class JsonFormatter(_Redacting):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, thread."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, timezone.utc)
        doc: dict[str, object] = {
            "time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": self.redact(record.getMessage()),
            "thread": record.threadName,
        }
        if record.exc_info:
            doc["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            doc["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Log to stderr at ``level`` in ``fmt`` (``text`` or ``json``), masking ``secrets``."""
    handler = logging.StreamHandler(sys.stderr)
    secret_list = list(secrets)
    handler.setFormatter(
        JsonFormatter(secret_list) if fmt == "json" else TextFormatter(secret_list)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if level != "DEBUG":
        # Per-request lines of the HTTP stack are noise below DEBUG.
        logging.getLogger("urllib3").setLevel(logging.WARNING)
