"""Plain output: every notification as a few lines on standard output (cron mail, CI logs, Lambda logs).

Never fails and needs nothing, which is why it is on by default: a fresh install shows what it would
have sent before Slack or email are set up.  Control characters from data are shown as
escapes (``costwatch.safetext``) so a hostile project name cannot rewrite the terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from costwatch import digest
from costwatch.k8s_summary import evidence_lines
from costwatch.notify import NEXT_STEPS, RESOLVED_STEPS, SCHEDULED_DIGEST, Delivery, Notification
from costwatch.safetext import terminal_safe


def _clean(x: Any, limit: int = 300) -> str:
    return terminal_safe(x, limit)


def render(n: Notification) -> str:
    if n.event == SCHEDULED_DIGEST:  # the digest's text escapes every value from data itself
        body = digest.text(digest.of(n)).rstrip("\n").split("\n")
        return "\n".join([f"[costwatch] {_clean(n.title)}"] + [f"  {line}" for line in body[1:]])
    lines = [f"[costwatch] {_clean(n.title)}" + (f" → {_clean(n.owner)}" if n.owner else "")]
    for a in n.alerts[:10]:
        cur = a.get("currency") or ""
        obs, exp = a.get("observed"), a.get("expected")
        money = f"{obs:,.2f} {cur}" + (f" vs expected {exp:,.2f}" if isinstance(exp, int | float) else "") \
            if isinstance(obs, int | float) else ""
        lines.append(f"  {_clean(a.get('severity', ''))} {_clean(a.get('kind', ''))} {_clean(a.get('project_name'))}"
                     f" ({_clean(a.get('provider'))}/{_clean(a.get('project'))}) since {_clean(a.get('start'))}:"
                     f" {_clean(a.get('summary', ''))}" + (f" [{money}]" if money else ""))
        lines += [f"    {_clean(x)}" for x in evidence_lines(a.get("evidence"))]
    if len(n.alerts) > 10:
        lines.append(f"  … and {len(n.alerts) - 10} more alerts")
    kind = str(n.alerts[0].get("kind", "")) if n.alerts else ""
    lines.append("  next: " + (RESOLVED_STEPS if n.event == "resolved" else NEXT_STEPS.get(kind, "")))
    return "\n".join(lines)


class StdoutNotifier:
    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def notify(self, notifications: list[Notification]) -> list[Delivery]:
        out = self.stream or sys.stdout
        for n in notifications:
            out.write(render(n) + "\n")
        out.flush()
        return [Delivery(ok=True, ref=n.id) for n in notifications]


def from_config(section: Any, cfg: Any) -> StdoutNotifier:
    return StdoutNotifier()


__all__ = ["StdoutNotifier", "from_config", "render"]
