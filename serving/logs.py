"""One structured log line per lifecycle event: ``event=model_loaded model=digits version=3``.

key=value lines are grep-able by people and parseable by log shippers without a JSON formatter,
and a single helper keeps every event in the same shape.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("serving")


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(ch in text for ch in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one lifecycle event as a single ``event=... key=value`` line."""
    parts = [f"event={event}"] + [f"{key}={_quote(value)}" for key, value in fields.items()]
    logger.log(level, " ".join(parts))


def configure(level: str = "INFO") -> None:
    """Set up process logging once (used by the CLI; library users keep their own config)."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s",
    )
    logger.setLevel(level.upper())
