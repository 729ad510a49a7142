"""Block Kit rendering of the scheduled spend summary (``costwatch.digest``): pure data in, Slack JSON out.

The same safety rules as ``slack_blocks``: every line that carries data is a ``plain_text`` object (Slack
never parses it for mentions, links or formatting, and ``<``/``>`` become look-alikes), section titles are
mrkdwn with ``&``/``<``/``>`` escaped and ``verbatim`` set, nobody is mentioned, and every text stays within
Slack's block limits (a long list ends in "… and N more").
"""

from __future__ import annotations

from typing import Any

from costwatch import digest
from costwatch.notify import Notification

from .slack_blocks import MAX_FALLBACK_TEXT, MAX_HEADER_TEXT, MAX_SECTION_TEXT, clean, esc, plain

MAX_LINES = 25   # lines per section; the email and `costwatch digest` show all of them


def _lines(lines: list[str]) -> str:
    """Lines for one ``plain_text`` object, cut to the section limit with a count of what was left out."""
    out: list[str] = []
    size = 0
    for n, line in enumerate(lines[:MAX_LINES]):
        text = plain(line, 300)
        if size + len(text) + 1 > MAX_SECTION_TEXT - 40:
            out.append(f"… and {len(lines) - n} more")
            return "\n".join(out)
        out.append(text)
        size += len(text) + 1
    if len(lines) > MAX_LINES:
        out.append(f"… and {len(lines) - MAX_LINES} more")
    return "\n".join(out)


def render(n: Notification) -> tuple[str, list[dict[str, Any]]]:
    """The fallback ``text`` and the blocks of one digest notification."""
    doc = digest.of(n)
    head = f"📊 {clean(n.title, 140)}"
    summary = digest.headline(doc)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": plain(head, MAX_HEADER_TEXT), "emoji": True}},
        {"type": "section", "text": {"type": "plain_text", "text": plain(summary, 1000), "emoji": False}}]
    if n.owner:
        blocks.append({"type": "context", "elements": [{"type": "plain_text", "text": plain(f"For {n.owner}", 300),
                                                        "emoji": False}]})
    for title, lines in digest.sections(doc):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*{esc(clean(title, 150))}*",
                                                   "verbatim": True}})
        blocks.append({"type": "section", "text": {"type": "plain_text", "text": _lines(lines) or "—",
                                                   "emoji": False}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "verbatim": True, "text": esc(clean(
        f"costwatch {doc.get('schedule') or ''} digest · period {doc.get('period_start') or '?'} · "
        "`costwatch report --format html` has every alert with its chart", 300))}]})
    fallback = esc(clean(f"{head}: {summary}", MAX_FALLBACK_TEXT // 5))
    return fallback, blocks


__all__ = ["render"]
