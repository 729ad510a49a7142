"""The outbox: every notification is stored before it is sent and marked after, so nothing is lost.

* ``enqueue`` inserts only if the id is new: a retried run queues nothing twice.
* ``deliver`` claims an item with a version-checked write ("sending") before calling the notifier, so
  two overlapping runs never both send it.  A send that fails is retried later with exponential backoff
  (or the service's Retry-After); short waits are retried within the run.  A permanent failure or too
  many attempts marks it failed: kept, counted, and reported until someone looks.
* A run that crashed between sending and marking leaves the item "sending".  After a lease it is
  checked with the notifier's ``find_delivered`` when it has one (Slack looks for the message's
  metadata), so it is marked delivered instead of posted again; otherwise it is resent (at least once).
* Updates of an incident wait for its first message on the same target, and thread under it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .alerts import iso
from .notify import Delivery, Notification, Notifier
from .state import Record, Store

log = logging.getLogger("costwatch.outbox")

KEEP = pd.Timedelta(days=30)           # delivered and failed items stay this long for the record
LEASE = pd.Timedelta(minutes=10)       # a "sending" item older than this was left by a crashed run
MAX_BACKOFF = pd.Timedelta(hours=1)
BASE_BACKOFF = pd.Timedelta(minutes=1)
STUCK_AFTER = pd.Timedelta(hours=6)


def _ttl(keep: pd.Timedelta) -> float:
    """Expiry in wall-clock time (what DynamoDB's TTL compares with), also for replayed runs."""
    return time.time() + keep.total_seconds()


def enqueue(store: Store, n: Notification, now: pd.Timestamp) -> bool:
    """Queue once; False when this notification (same id) was already queued by an earlier run."""
    doc = {"notification": n.to_json(), "status": "pending", "attempts": 0, "next_attempt": iso(now),
           "created_at": iso(now), "last_error": None, "ref": None}
    return store.put("outbox", n.id, doc, version=None, expires_at=_ttl(KEEP))


def thread_key(n: Notification) -> str:
    return f"{n.group_key}|{n.target.key}"


@dataclass
class DeliveryReport:
    delivered: int = 0            # this run
    pending: int = 0              # waiting for a retry after this run
    failed: int = 0               # given up (permanent error or too many attempts), still stored
    stuck: int = 0                # failed, or pending for longer than stuck_after
    errors: list[str] = field(default_factory=list)   # one line per failed attempt, no secrets

    def summary(self) -> str:
        return f"delivered {self.delivered}, pending {self.pending}, failed {self.failed}"


@dataclass
class _Item:
    rec: Record
    n: Notification


def _load(rec: Record) -> _Item:
    return _Item(rec, Notification.from_json(rec.doc["notification"]))


def deliver(store: Store, notifiers: dict[str, Notifier], now: pd.Timestamp, *, max_attempts: int = 50,
            stuck_after: pd.Timedelta = STUCK_AFTER, max_wait: float = 10.0, in_run_retries: int = 2,
            sleep: Callable[[float], None] = time.sleep) -> DeliveryReport:
    report = DeliveryReport()
    items = [_load(r) for r in store.scan("outbox") if r.doc.get("status") in ("pending", "sending")]
    items.sort(key=lambda i: (i.rec.doc.get("created_at") or "", i.n.group_key, i.n.sequence, i.n.id))
    first_pending = {thread_key(i.n) for i in items if i.n.sequence == 0 and i.n.event == "firing"}
    for item in items:
        doc, n = item.rec.doc, item.n
        due = pd.Timestamp(doc.get("next_attempt") or now)
        if doc["status"] == "sending":
            since = pd.Timestamp(doc.get("sending_since") or now)
            if now - since < LEASE:
                continue  # another run is sending it right now
        elif due > now:
            continue
        notifier = notifiers.get(n.target.channel)
        if notifier is None:
            _finish(store, item, now, Delivery(ok=False, permanent=True,
                                               error=f"notify.{n.target.channel} is no longer configured"),
                    report, max_attempts)
            continue
        if n.sequence > 0 or n.event != "firing":
            tk = thread_key(n)
            ref = store.get("thread", tk)
            if ref is None and tk in first_pending:
                continue  # the incident's first message has not gone yet: keep the order
            n.thread = ref.doc.get("ref") if ref else None
        # an earlier attempt may have reached the service even though we never heard back (a crash, a
        # timeout after the post): ask before sending again, where the service can tell
        if doc["status"] == "sending" or int(doc.get("attempts", 0)) > 0:
            found = _already_delivered(notifier, n)
            if found is not None:
                _finish(store, item, now, found, report, max_attempts)
                continue
        claimed = store.put("outbox", item.rec.key, {**doc, "status": "sending", "sending_since": iso(now),
                                                      "attempts": int(doc.get("attempts", 0)) + 1},
                            version=item.rec.version, expires_at=_ttl(KEEP))
        if not claimed:
            continue  # another run claimed it between our read and now
        item.rec = store.get("outbox", item.rec.key) or item.rec
        d = _send(notifier, n)
        for _ in range(in_run_retries):
            if d.ok or d.permanent:
                break
            wait = d.retry_after if d.retry_after is not None else 1.0
            if wait > max_wait:
                break
            sleep(wait)
            d = _already_delivered(notifier, n) or _send(notifier, n)
        _finish(store, item, now, d, report, max_attempts)
        if d.ok and n.sequence == 0 and n.event == "firing":
            first_pending.discard(thread_key(n))
    for r in store.scan("outbox"):
        st = r.doc.get("status")
        if st == "pending":
            report.pending += 1
            if now - pd.Timestamp(r.doc.get("created_at") or now) > stuck_after:
                report.stuck += 1
        elif st == "failed":
            report.failed += 1
            report.stuck += 1
    return report


def _already_delivered(notifier: Notifier, n: Notification) -> Delivery | None:
    """The service's own record of an earlier attempt, for notifiers that can look (Slack metadata)."""
    find = getattr(notifier, "find_delivered", None)
    if find is None:
        return None
    try:
        found = find(n)
    except Exception as e:  # a failed check means "don't know": send (at least once beats never)
        log.warning("notifier %s could not check for an earlier delivery: %s", notifier.name, type(e).__name__)
        return None
    return found if isinstance(found, Delivery) and found.ok else None


def _send(notifier: Notifier, n: Notification) -> Delivery:
    try:
        [d] = notifier.notify([n])
    except Exception as e:  # a notifier bug must not stop the other deliveries
        log.warning("notifier %s raised %s", notifier.name, type(e).__name__)
        return Delivery(ok=False, error=f"{notifier.name} failed: {type(e).__name__}")
    return d


def _finish(store: Store, item: _Item, now: pd.Timestamp, d: Delivery, report: DeliveryReport,
            max_attempts: int) -> None:
    doc: dict[str, Any] = dict(item.rec.doc)
    n = item.n
    attempts = int(doc.get("attempts", 0))
    if d.ok:
        doc.update(status="delivered", delivered_at=iso(now), ref=d.ref, last_error=d.error)
        report.delivered += 1
        if n.sequence == 0 and n.event == "firing" and d.ref:
            store.put("thread", thread_key(n), {"ref": d.ref}, version=None, expires_at=_ttl(4 * KEEP))
    else:
        err = d.error or "delivery failed"
        report.errors.append(f"{n.target.channel} {n.target.address or '(default)'}: {err}")
        if d.permanent or attempts >= max_attempts:
            doc.update(status="failed", last_error=err, failed_at=iso(now))
        else:
            backoff = min(BASE_BACKOFF * (2 ** max(attempts - 1, 0)), MAX_BACKOFF)
            if d.retry_after is not None:
                backoff = max(backoff, pd.Timedelta(seconds=d.retry_after))
            doc.update(status="pending", last_error=err, next_attempt=iso(now + backoff))
    if not store.put("outbox", item.rec.key, doc, version=item.rec.version, expires_at=_ttl(KEEP)):
        log.warning("outbox item %s changed under us; leaving it to the other run", item.rec.key)


def items(store: Store) -> list[dict[str, Any]]:
    """Every stored item, newest first, for ``costwatch outbox``: what went, what waits and why."""
    out = []
    for r in store.scan("outbox"):
        n = Notification.from_json(r.doc["notification"])
        out.append({"id": r.key, "status": r.doc.get("status"), "event": n.event, "target": n.target.key,
                    "title": n.title, "attempts": r.doc.get("attempts", 0), "created_at": r.doc.get("created_at"),
                    "next_attempt": r.doc.get("next_attempt"), "last_error": r.doc.get("last_error")})
    return sorted(out, key=lambda d: d["created_at"] or "", reverse=True)


__all__ = ["DeliveryReport", "deliver", "enqueue", "items", "thread_key"]
