"""Secret values never reach status, Events, logs or reports: every text that may quote one
(a trainer's stderr, a backend's error) passes through :func:`redact` first."""

from __future__ import annotations

from collections.abc import Iterable

MASK = "[redacted]"
#: Shorter values are not masked: they would blank out ordinary words and digits.
MIN_LENGTH = 4


def redact(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is masked whole.
    for value in sorted({s for s in secrets if len(s) >= MIN_LENGTH}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return text
