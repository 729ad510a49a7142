"""One exception hierarchy, so callers catch ``CostwatchError`` and get a message a user can act on.

Every message names where the problem is (file, line or row, column or key) and what to do.  Messages are
built from data the user supplied, never from secrets: config values are not echoed back.
"""

from __future__ import annotations


class CostwatchError(Exception):
    """Base for every error costwatch raises on purpose; the CLI turns these into exit code 2."""


class ConfigError(CostwatchError):
    """The configuration file is missing, malformed, or has a bad or unknown key."""


class DataError(CostwatchError):
    """An input data file (cost export, usage CSV) is missing, unreadable or has bad rows."""


class ProviderError(CostwatchError):
    """A provider could not fetch what it was asked for; other providers carry on."""


class NotifyError(CostwatchError):
    """A notification could not be delivered now; it stays in the outbox and is retried."""


def where(file: str | None = None, line: int | None = None, column: str | None = None) -> str:
    """Format a location prefix like ``costs.csv, line 12, column BilledCost: ``."""
    parts = []
    if file:
        parts.append(str(file))
    if line is not None:
        parts.append(f"line {line}")
    if column:
        parts.append(f"column {column}")
    return (", ".join(parts) + ": ") if parts else ""
