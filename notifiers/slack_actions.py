"""The buttons on costwatch's Slack messages and the status line an answer adds: pure Block Kit, no I/O.

Every incident message carries one ``actions`` block (``block_id`` :data:`ACTIONS_BLOCK`) whose elements
hold the incident's group id as their value; the Bolt app (:mod:`costwatch.surfaces.slack_app`) reads the
value back, so nothing else about the incident has to travel through Slack.  Which buttons show follows
the incident's answer state: an acknowledged incident offers "Unacknowledge", a silenced one "Unsilence",
one with an answer "Undo".  A resolved incident keeps only the feedback buttons (an owner may still say
it was never an anomaly).

Values are ours (ids we built); the status line shows Slack user ids as ``<@U…>`` mentions built here
from the request's verified user id, never text from the payload.
"""

from __future__ import annotations

import re
from typing import Any

ACTIONS_BLOCK = "costwatch_answers"
STATUS_BLOCK = "costwatch_status"
PREFIX = "costwatch_"
ACTION_IDS = {a: PREFIX + a for a in ("ack", "unack", "silence", "unsilence", "expected", "not_anomaly", "undo",
                                      "digest")}
SILENCE_HOURS = (6, 24)
_USER = re.compile(r"[UW][A-Z0-9]{2,20}")
_GROUP = re.compile(r"[0-9a-f]{16}#[0-9]{1,9}")


def _button(action: str, text: str, group: str, style: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "action_id": ACTION_IDS[action], "value": group,
                         "text": {"type": "plain_text", "text": text, "emoji": True}}
    if style:
        b["style"] = style
    return b


def _option(text: str, value: str) -> dict[str, Any]:
    return {"text": {"type": "plain_text", "text": text, "emoji": True}, "value": value}


def actions_block(group: str, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The buttons for one incident in its current answer state; None when ``group`` is not an incident id."""
    if not _GROUP.fullmatch(group or ""):
        return None
    st = state or {}
    elements: list[dict[str, Any]] = []
    if st.get("status") != "resolved":
        elements.append(_button("unack", "Unacknowledge", group) if st.get("acked_by")
                        else _button("ack", "Acknowledge", group, "primary"))
        if st.get("silence_id"):
            elements.append(_button("unsilence", "Unsilence", group))
        else:
            elements.append({"type": "static_select", "action_id": ACTION_IDS["silence"],
                             "placeholder": {"type": "plain_text", "text": "Silence…", "emoji": True},
                             "options": [_option(f"Silence {h} h", f"{group}|{h}") for h in SILENCE_HOURS]})
    if st.get("feedback_kind"):
        what = "Expected" if st["feedback_kind"] == "expected" else "Not an anomaly"
        elements.append(_button("undo", f"Undo “{what}”", group))
    else:
        elements.append(_button("expected", "Expected", group))
        elements.append(_button("not_anomaly", "Not an anomaly", group, "danger"))
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements}


DIGEST_CHOICES = (("ack", "Acknowledge"), ("silence6", "Silence 6 h"), ("silence24", "Silence 24 h"),
                  ("expected", "Expected"), ("not_anomaly", "Not an anomaly"))


def digest_menu(group: str) -> dict[str, Any] | None:
    """The answers for one incident listed in a digest, as a section's overflow menu (Slack allows 5 options,
    values of 150 characters): value ``<answer>|<group>``."""
    if not _GROUP.fullmatch(group or ""):
        return None
    return {"type": "overflow", "action_id": ACTION_IDS["digest"],
            "options": [_option(text, f"{verb}|{group}") for verb, text in DIGEST_CHOICES]}


def _who(user: Any) -> str:
    return f"<@{user}>" if isinstance(user, str) and _USER.fullmatch(user) else "someone"


def status_block(state: dict[str, Any]) -> dict[str, Any] | None:
    """One context line: who acknowledged, silenced or answered, and until when."""
    parts = []
    if state.get("acked_by"):
        parts.append(f"👀 Acknowledged by {_who(state['acked_by'])} at {state.get('acked_at') or '?'}")
    if state.get("silence_id"):
        parts.append(f"🔕 Silenced by {_who(state.get('silenced_by'))} until {state.get('silenced_until') or '?'}")
    if state.get("feedback_kind"):
        what = "expected (planned)" if state["feedback_kind"] == "expected" else "not an anomaly"
        parts.append(f"📝 Marked {what} by {_who(state.get('feedback_by'))} at {state.get('feedback_at') or '?'}")
    if not parts:
        return None
    return {"type": "context", "block_id": STATUS_BLOCK,
            "elements": [{"type": "mrkdwn", "text": p} for p in parts]}


def with_answers(blocks: list[dict[str, Any]], group: str, state: dict[str, Any],
                 max_blocks: int = 50) -> list[dict[str, Any]]:
    """A message's blocks with the status line and buttons replaced for the new state."""
    body = [b for b in blocks if isinstance(b, dict) and b.get("block_id") not in (ACTIONS_BLOCK, STATUS_BLOCK)]
    extra = [b for b in (status_block(state), actions_block(group, state)) if b is not None]
    room = max_blocks - len(extra)
    if len(body) > room:  # keep the headline and the end (owner, next steps, context); drop from the middle
        body = body[: room - 3] + body[-3:]
    return body + extra


__all__ = ["ACTIONS_BLOCK", "ACTION_IDS", "DIGEST_CHOICES", "SILENCE_HOURS", "STATUS_BLOCK", "actions_block",
           "digest_menu", "status_block",
           "with_answers"]
