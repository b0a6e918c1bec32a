"""User-controlled text inside our own messages: bounded, one line, always encodable.

Refusals quote what the user sent so they can see what to change. Quoting it raw
would let one request put a megabyte into the log and the response, a newline
into an HTTP reason (aiohttp refuses it: a 500), or a lone surrogate into a
Prometheus scrape. Everything a user sent goes through ``quoted`` first.
"""

from __future__ import annotations

from typing import Any

MAX_QUOTED = 80


def quoted(value: Any, limit: int = MAX_QUOTED) -> str:
    """``repr`` of ``value`` on one line, at most about ``limit`` characters, ASCII only.

    ``ascii()`` escapes newlines, control characters, non-ASCII letters and lone
    surrogates alike, so the result is safe in logs, HTTP reasons and JSON.
    """
    text = ascii(value)
    if len(text) > limit:
        text = f"{text[: limit - 3]}... ({len(text)} characters)"
    return text


def one_line(text: str, limit: int = 2000) -> str:
    """A message of ours that may embed user text, made safe for an HTTP reason."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
