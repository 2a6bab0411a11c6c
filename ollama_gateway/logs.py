"""Log formatting: one line per event. `LOG_FORMAT=text` (the default) for people, `json` for
log collectors; both carry the fields passed through `extra=` (request id, key preview...)."""

import json
import logging
import re
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else was passed through `extra=` and is worth keeping.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# Values printed bare in text lines; anything else is quoted as a JSON string, so that a value
# holding spaces or a line break (a model name is the client's text) cannot forge a field or a line.
_BARE = re.compile(r"[\w.:/@+-]+")


class TextFormatter(logging.Formatter):
    """`time level logger message`, then ` name=value` for each field passed through `extra=`
    (None and "" left out): a request's line carries its request id, key preview, client address,
    model and tokens as well as the method, path, status, outcome and latency of its message."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # before any traceback
        line = super().formatMessage(record)
        fields = [
            f"{name}={_text_value(value)}"
            for name, value in vars(record).items()
            if name not in _STANDARD_ATTRS and value not in (None, "")
        ]
        return " ".join([line, *fields]) if fields else line


def _text_value(value) -> str:
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)


class RedactKeys(logging.Filter):
    """The last guard: whatever a log line says (Django's own "Service Unavailable: /api/keys/
    <path>" included), and whatever its fields hold (a model named like a key, say), a raw API
    key in it is cut to its preview."""

    def filter(self, record: logging.LogRecord) -> bool:
        from keys.crypto import KEY_PREFIX, redact_keys

        message = record.getMessage()
        if KEY_PREFIX in message:
            record.msg, record.args = redact_keys(message), None
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and isinstance(value, str) and KEY_PREFIX in value:
                setattr(record, name, redact_keys(value))
        return True
