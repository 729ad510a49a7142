"""Untrusted text on its way to a terminal or a spreadsheet: one implementation for every print point.

Project names, services, tags, file names, CSV headers, config keys and ``--reason`` all come from data or
from users.  Printed raw, ``\\x1b[2J`` clears the screen, ``\\x1b]0;…\\x07`` retitles the window, ``\\x1b]8;;``
makes a link, and a bidi override (U+202E) reorders what the reader sees ("Trojan Source").

``terminal_safe`` shows such characters instead of sending them: every control (C0, DEL, C1), format (bidi
overrides and isolates, zero-width characters, BOM), line/paragraph separator, surrogate, private-use and
unassigned code point becomes a visible ``\\xNN`` / ``\\uNNNN`` escape.  Everything printable passes
unchanged, so ordinary names in any script are untouched.

``spreadsheet_safe`` neutralises a CSV cell a spreadsheet would run as a formula (OWASP "CSV injection"):
text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading single quote.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

# Unicode categories shown as escapes: controls, format characters (bidi, zero-width), line and paragraph
# separators, surrogates, private use and unassigned code points.
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(ch: str) -> str:
    if unicodedata.category(ch) in _HIDDEN:
        code = ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return ch


def terminal_safe(text: object, limit: int | None = None, *, newlines: bool = False) -> str:
    """``text`` as a string that cannot act on a terminal: hidden and control characters escaped visibly.

    ``newlines`` keeps ``\\n`` (multi-line error messages and report bodies); otherwise it is escaped too,
    so one value stays on one line.  ``limit`` caps the result (escaping only lengthens), ending in ``…``.
    """
    s = "" if text is None else str(text)
    if limit is not None:
        s = s[: limit + 1]
    if not s.isprintable():  # the fast path: printable text (spaces included) needs nothing
        if newlines:
            s = "\n".join("".join(map(_escape, part)) for part in s.split("\n"))
        else:
            s = "".join(map(_escape, s))
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s


def safe_strings(value: Any, *, newlines: bool = False) -> Any:
    """``value`` with every string inside it (dict keys and values, lists, tuples) made ``terminal_safe``."""
    if isinstance(value, str):
        return terminal_safe(value, newlines=newlines)
    if isinstance(value, Mapping):
        return {safe_strings(k): safe_strings(v, newlines=newlines) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(safe_strings(v, newlines=newlines) for v in value)
    return value


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will not evaluate: text starting with a formula character gets a leading
    ``'`` (OWASP), and hidden characters are escaped as in ``terminal_safe``.  Numbers stay numbers: a
    negative amount is a number cell, not a formula."""
    if not isinstance(value, str):
        return value
    value = terminal_safe(value)
    return "'" + value if value.startswith(FORMULA_START) else value




def plain_console(**kwargs: Any) -> Any:
    """A rich Console that prints ``str`` as it is: no markup (``[link=…]`` in a project name would become an
    OSC 8 hyperlink) and no ``:emoji:`` codes.  Styles come only from the ``Text`` objects costwatch builds."""
    from rich.console import Console

    return Console(markup=False, emoji=False, **kwargs)


__all__ = ["FORMULA_START", "plain_console", "safe_strings", "spreadsheet_safe", "terminal_safe"]
