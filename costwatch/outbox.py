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
* Within a run, posts to one target are paced (Slack takes about one message per second per channel), a
  target that answered "wait N s" is not tried again before that, and a service that failed twice in a row
  without saying when to come back is left alone for the rest of the run: what was not tried stays
  pending, untouched, for the next run.  A run with Slack down costs two timeouts, not one per message.
* A notifier that fails for good (revoked token, unverified sender) is recorded as broken by
  ``costwatch.fallback``, which tells the fallback owner; while it is broken each run tries its failed items
  again (one probe per notifier until one fails again), so once it works again nothing it missed is lost.
* Digests: when more than ``digest_after`` never-tried notifications are due for one target in one run
  (an attack across many projects, or the backlog after an outage), they are folded into one digest
  message listing the incidents, most severe first.  The members are marked "digested" (with the digest's
  id) before the digest is queued, and the digest is an outbox item like any other (idempotent id, claim,
  crash reconciliation), so each incident is told once: individually or in exactly one digest.  Members
  whose digest was never queued (a crash in between) go back to pending after the lease.  Channels read
  by machines (``UNFOLDED``: PagerDuty, webhook, SNS) are never folded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .alerts import SEVERITY_ORDER, finite, iso
from .notify import SCHEDULED_DIGEST, Delivery, Notification, Notifier, notification_id
from .state import Record, Store

log = logging.getLogger("costwatch.outbox")

KEEP = pd.Timedelta(days=30)           # delivered and failed items stay this long for the record
LEASE = pd.Timedelta(minutes=10)       # a "sending" item older than this was left by a crashed run
MAX_BACKOFF = pd.Timedelta(hours=1)
BASE_BACKOFF = pd.Timedelta(minutes=1)
STUCK_AFTER = pd.Timedelta(hours=6)
# how much earlier than its created_at a notification's earlier attempt is looked for at the service: our
# clock may be ahead of the service's (or the run replayed with a later ``now``), and a lookup window that
# starts after the real post finds nothing and posts it again
CLOCK_SKEW = pd.Timedelta(hours=1)
# seconds between two posts to the same target, per notifier (Slack: ~1 message per second per channel)
PACE: dict[str, float] = {"slack": 1.0, "teams": 0.5}  # Teams webhooks: a few posts per second at most
DIGEST_AFTER = 10      # more never-tried notifications than this due for one target in one run: one digest
DIGEST_MAX = 2000      # members per digest (their ids are kept in the digest's outbox item: DynamoDB's 400 KB)
DIGEST_LIST = 50       # incidents listed in a digest message, most severe first; the rest are counted
# channels read by machines, not people, get every incident on its own, never in a digest: PagerDuty needs
# each incident's dedup_key to trigger and resolve it, webhook and SNS consumers route per incident
UNFOLDED = frozenset({"pagerduty", "webhook", "sns"})
TRIES_PER_SERVICE = 2  # transient failures in a row (on different targets) after which a service is left alone


def _ttl(keep: pd.Timedelta) -> float:
    """Expiry in wall-clock time (what DynamoDB's TTL compares with), also for replayed runs."""
    return time.time() + keep.total_seconds()


def enqueue(store: Store, n: Notification, now: pd.Timestamp) -> bool:
    """Queue once; False when this notification (same id) was already queued by an earlier run."""
    return store.put("outbox", n.id, _doc(n, now), version=None, expires_at=_ttl(KEEP))


def enqueue_many(store: Store, notifications: list[Notification], now: pd.Timestamp,
                 digest_after: int = DIGEST_AFTER) -> tuple[int, int, int]:
    """Queue this run's notifications; where one target gets more than ``digest_after`` new ones, they are
    queued already folded into digests (members written once, as "digested", then the digest), which is
    what :func:`deliver` would do with them.  Returns (queued, digests made, notifications folded into them)."""
    by_target: dict[str, list[Notification]] = {}
    for n in notifications:
        by_target.setdefault(n.target.key, []).append(n)
    queued = digests = folded = 0
    for group in by_target.values():
        if digest_after <= 0 or len(group) <= digest_after or group[0].target.channel in UNFOLDED:
            queued += sum(enqueue(store, n, now) for n in group)
            continue
        for i in range(0, len(group), DIGEST_MAX):
            chunk = group[i:i + DIGEST_MAX]
            did, key = _digest_id(chunk)
            new = [n for n in chunk if store.put(
                "outbox", n.id, {**_doc(n, now), "status": "digested", "digest": did, "digested_at": iso(now)},
                version=None, expires_at=_ttl(KEEP))]
            queued += len(new)
            if not new:
                continue  # a retried run: all of them were queued before
            if len(new) < len(chunk):
                # some were queued by an earlier run that died half-way (theirs go out once the lease
                # lapses): a digest of only the new ones, or plain items when they are few
                few = len(new) <= digest_after
                did, key = _digest_id(new)
                for n in new:
                    rec = store.get("outbox", n.id)
                    if rec is not None:
                        doc = _doc(n, now) if few else {**rec.doc, "digest": did}
                        store.put("outbox", n.id, doc, version=rec.version, expires_at=_ttl(KEEP))
                if few:
                    continue
            d = digest_notification(did, key, new, now, digest_after)
            if store.put("outbox", did, _digest_doc(d, new, now), version=None, expires_at=_ttl(KEEP)):
                digests += 1
                folded += len(new)
    return queued, digests, folded


def _doc(n: Notification, now: pd.Timestamp) -> dict[str, Any]:
    return {"notification": n.to_json(), "status": "pending", "attempts": 0, "next_attempt": iso(now),
            "created_at": iso(now), "last_error": None, "ref": None}


def _digest_id(members: list[Notification]) -> tuple[str, str]:
    """The digest's notification id and group key, from its members' ids (stable across retried runs)."""
    h = hashlib.sha256("\x1f".join(sorted(n.id for n in members)).encode()).hexdigest()[:16]
    return notification_id(f"digest:{h}", members[0].target, "digest", 0), f"digest:{h}"


def _digest_doc(d: Notification, members: list[Notification], now: pd.Timestamp) -> dict[str, Any]:
    return {**_doc(d, now), "members": [n.id for n in members],
            "firing_groups": [n.group_key for n in members if n.sequence == 0 and n.event == "firing"]}


def thread_key(n: Notification) -> str:
    return f"{n.group_key}|{n.target.key}"


@dataclass
class DeliveryReport:
    delivered: int = 0            # this run
    pending: int = 0              # waiting for a retry after this run
    failed: int = 0               # given up (permanent error or too many attempts), still stored
    stuck: int = 0                # failed, or pending for longer than stuck_after
    errors: list[str] = field(default_factory=list)   # one line per failed attempt, no secrets
    digests: int = 0              # digest messages made this run ...
    digested: int = 0             # ... from this many notifications
    deferred: int = 0             # due but not tried this run (service down, or asked us to wait): pending
    retried: list[str] = field(default_factory=list)  # delivered this run after a failed attempt, and why
    # channel health for costwatch.fallback: notifier -> the first permanent failure this run (no secrets),
    # notifiers that delivered something this run, and notifiers with permanently failed items left
    broken: dict[str, str] = field(default_factory=dict)
    working: set[str] = field(default_factory=set)
    failed_channels: set[str] = field(default_factory=set)

    def merge(self, later: DeliveryReport) -> None:
        """Add a later delivery pass of the same run (the fallback notices); its outbox counts are the newer."""
        self.delivered += later.delivered
        self.pending, self.failed, self.stuck = later.pending, later.failed, later.stuck
        self.errors += later.errors
        self.deferred += later.deferred
        self.retried += later.retried
        self.digests += later.digests
        self.digested += later.digested
        for ch, why in later.broken.items():
            self.broken.setdefault(ch, why)
        self.working |= later.working
        self.failed_channels = later.failed_channels

    def summary(self) -> str:
        out = f"delivered {self.delivered}, pending {self.pending}, failed {self.failed}"
        if self.retried:
            out += f" ({len(self.retried)} delivered after a retry)"
        if self.digests:
            out += f"; {self.digested} notification(s) folded into {self.digests} digest(s)"
        if self.deferred:
            out += f"; {self.deferred} not tried this run (service down or rate limited)"
        return out


@dataclass
class _Item:
    rec: Record
    n: Notification


def _load(rec: Record) -> _Item:
    return _Item(rec, Notification.from_json(rec.doc["notification"]))


class _Timer:
    """Time as the outbox sees it: the clock plus every sleep that took no real time (a test's injected
    ``sleep``), so pacing and Retry-After stay consistent whether sleeps are real or not."""

    def __init__(self, clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.clock, self._sleep, self.credit = clock, sleep, 0.0

    def now(self) -> float:
        return self.clock() + self.credit

    def sleep(self, seconds: float) -> None:
        t0 = self.clock()
        self._sleep(seconds)
        took = self.clock() - t0
        if took < seconds:
            self.credit += seconds - took


def deliver(store: Store, notifiers: dict[str, Notifier], now: pd.Timestamp, *, max_attempts: int = 50,
            stuck_after: pd.Timedelta = STUCK_AFTER, max_wait: float = 10.0, in_run_retries: int = 2,
            sleep: Callable[[float], None] = time.sleep, digest_after: int = DIGEST_AFTER,
            pace: dict[str, float] | None = None, clock: Callable[[], float] = time.monotonic,
            retry_failed: set[str] | frozenset[str] = frozenset(), only: set[str] | None = None) -> DeliveryReport:
    """Deliver what is due.  ``retry_failed``: notifiers known broken (costwatch.fallback) whose permanently
    failed items are tried again, oldest first, one probe per notifier until one fails again: when the
    channel works again, what it could not deliver goes out.  ``only``: deliver just these ids."""
    report = DeliveryReport()
    items = _due_items(store, notifiers, now, max_attempts, retry_failed, only)
    if digest_after > 0 and only is None:
        items = _fold(store, items, now, digest_after, report)
    run = _Run(store, notifiers, now, report, _Timer(clock, sleep), PACE if pace is None else pace,
               max_attempts, max_wait, in_run_retries, _first_pending(items))
    run.serve(items)
    for why, count in run.deferred.items():
        report.deferred += count
        report.errors.append(f"{count} more notification(s) not tried this run ({why}); they stay pending")
    _count(store, now, stuck_after, report)
    return report


def _due_items(store: Store, notifiers: dict[str, Notifier], now: pd.Timestamp, max_attempts: int,
               retry_failed: set[str] | frozenset[str], only: set[str] | None) -> list[_Item]:
    """Pending and sending items, plus permanently failed ones of notifiers being probed, oldest first in
    each incident's order."""
    records = store.scan("outbox")
    if _repair_digests(store, records, now):
        records = store.scan("outbox")

    def wanted(doc: dict[str, Any]) -> bool:
        if doc.get("status") in ("pending", "sending"):
            return True
        return bool(doc.get("status") == "failed" and doc.get("permanent") and doc.get("channel") in retry_failed
                    and doc.get("channel") in notifiers and int(doc.get("attempts", 0)) < max_attempts)

    items = [_load(r) for r in records if wanted(r.doc)]
    if only is not None:
        items = [i for i in items if i.rec.key in only]
    items.sort(key=lambda i: (i.rec.doc.get("created_at") or "", i.n.group_key, i.n.sequence, i.n.id))
    return items


def _first_pending(items: list[_Item]) -> set[str]:
    """Threads whose first message is still to go: their follow-ups wait for it (a digest is their first)."""
    first = {thread_key(i.n) for i in items if i.n.sequence == 0 and i.n.event == "firing"}
    first |= {f"{group}|{i.n.target.key}" for i in items if i.n.event == "digest"
              for group in i.rec.doc.get("firing_groups") or []}
    return first


def _count(store: Store, now: pd.Timestamp, stuck_after: pd.Timedelta, report: DeliveryReport) -> None:
    """The outbox's state after the run, for the report and costwatch.fallback."""
    for r in store.scan("outbox"):
        st = r.doc.get("status")
        if st == "pending":
            report.pending += 1
            if now - pd.Timestamp(r.doc.get("created_at") or now) > stuck_after:
                report.stuck += 1
        elif st == "failed":
            report.failed += 1
            report.stuck += 1
            if r.doc.get("permanent") and r.doc.get("channel"):
                report.failed_channels.add(str(r.doc["channel"]))


@dataclass
class _Run:
    """One delivery run's memory: which services and targets are left alone (``down``: key -> why), transient
    failures in a row per service, the timer time before which a target gets nothing more (pace,
    Retry-After), and what was not tried and why."""
    store: Store
    notifiers: dict[str, Notifier]
    now: pd.Timestamp
    report: DeliveryReport
    timer: _Timer
    spacing: dict[str, float]
    max_attempts: int
    max_wait: float
    in_run_retries: int
    first_pending: set[str]
    down: dict[str, str] = field(default_factory=dict)
    strikes: Counter[str] = field(default_factory=Counter)
    not_before: dict[str, float] = field(default_factory=dict)
    deferred: Counter[str] = field(default_factory=Counter)

    def serve(self, items: list[_Item]) -> None:
        """Passes over the items: a target that must wait keeps its items (in order) for a later pass while
        the other targets are served; when only waiting targets are left, sleep until the first is ready."""
        todo = items
        while todo:
            later: list[_Item] = []
            waiting: set[str] = set()
            for item in todo:
                key = item.n.target.key
                if key in waiting or self.attempt(item):
                    waiting.add(key)
                    later.append(item)
            if not later:
                break
            pause = min(self.not_before.get(i.n.target.key, 0.0) for i in later) - self.timer.now()
            if pause > 0:
                self.timer.sleep(pause)
            todo = later

    def attempt(self, item: _Item) -> bool:
        """Deliver one item if it is due; True when its target must first wait a little (pace, Retry-After),
        so the caller comes back to it after serving the other targets."""
        if not self._due(item):
            return False
        notifier = self._notifier(item)
        if notifier is None or not self._threaded(item):
            return False
        n = item.n
        wait = self.not_before.get(n.target.key, 0.0) - self.timer.now()
        if wait > self.max_wait:
            self.deferred[f"{_where(n)} asked us to wait"] += 1
            return False
        if wait > 0:
            return True
        if self._delivered_before(item, notifier) or not self._claim(item):
            return False
        self._record(item, self._send_retrying(notifier, n))
        return False

    def _due(self, item: _Item) -> bool:
        doc = item.rec.doc
        if doc["status"] == "failed":
            return item.n.target.channel not in self.report.broken  # failed for good again: one probe is enough
        if doc["status"] == "sending":
            return self.now - pd.Timestamp(doc.get("sending_since") or self.now) >= LEASE  # else another run has it
        return pd.Timestamp(doc.get("next_attempt") or self.now) <= self.now

    def _notifier(self, item: _Item) -> Notifier | None:
        """The item's notifier, or None when it is gone (the item fails for good) or left alone this run."""
        n = item.n
        notifier = self.notifiers.get(n.target.channel)
        if notifier is None:
            _finish(self.store, item, self.now, Delivery(ok=False, permanent=True,
                                                         error=f"notify.{n.target.channel} is no longer configured"),
                    self.report, self.max_attempts, tried=False)
            return None
        stop = self.down.get(n.target.channel) or self.down.get(n.target.key)
        if stop is not None:
            self.deferred[stop] += 1
            return None
        return notifier

    def _threaded(self, item: _Item) -> bool:
        """Sets the thread a follow-up replies in; False while the incident's first message has not gone."""
        n = item.n
        if n.event in ("digest", SCHEDULED_DIGEST):
            n.thread = None  # a digest (and the scheduled summary) stands on its own
        elif n.sequence > 0 or n.event != "firing":
            tk = thread_key(n)
            ref = self.store.get("thread", tk)
            if ref is None and tk in self.first_pending:
                return False
            n.thread = ref.doc.get("ref") if ref else None
        return True

    def _delivered_before(self, item: _Item, notifier: Notifier) -> bool:
        """An earlier attempt may have reached the service though we never heard back (a crash, a timeout
        after the post): ask before sending again, where the service can tell."""
        doc = item.rec.doc
        if doc["status"] != "sending" and int(doc.get("attempts", 0)) == 0:
            return False
        found = _already_delivered(notifier, item.n)
        if found is None:
            return False
        _finish(self.store, item, self.now, found, self.report, self.max_attempts)
        _after_delivery(item, self.first_pending)
        return True

    def _claim(self, item: _Item) -> bool:
        """Marks the item as being sent; False when another run claimed it between our read and now."""
        doc = item.rec.doc
        claimed = self.store.put("outbox", item.rec.key, {**doc, "status": "sending", "sending_since": iso(self.now),
                                                          "attempts": int(doc.get("attempts", 0)) + 1},
                                 version=item.rec.version, expires_at=_ttl(KEEP))
        if claimed:
            item.rec = self.store.get("outbox", item.rec.key) or item.rec
        return claimed

    def _send_retrying(self, notifier: Notifier, n: Notification) -> Delivery:
        """Sends, retrying a transient failure within the run when the wait it asks for is short."""
        d = _send(notifier, n)
        first_error = None if d.ok else d.error
        for _ in range(self.in_run_retries):
            if d.ok or d.permanent:
                break
            retry_in = d.retry_after if d.retry_after is not None else 1.0
            if retry_in > self.max_wait:
                break
            self.timer.sleep(retry_in)
            d = _already_delivered(notifier, n) or _send(notifier, n)
        if d.ok and first_error is not None:
            self.report.retried.append(f"{_where(n)}: {first_error} -> delivered on a retry within the run")
        return d

    def _record(self, item: _Item, d: Delivery) -> None:
        """Stores the outcome and what it means for the rest of the run: pace the target, wait out a rate
        limit, or leave the target (and after repeated failures the service) alone."""
        n = item.n
        _finish(self.store, item, self.now, d, self.report, self.max_attempts)
        self.not_before[n.target.key] = self.timer.now() + self.spacing.get(n.target.channel, 0.0)
        if d.ok:
            self.strikes[n.target.channel] = 0
            _after_delivery(item, self.first_pending)
        elif d.retry_after is not None and not d.permanent:  # rate limited: this target waits, the others go on
            self.not_before[n.target.key] = max(self.not_before[n.target.key], self.timer.now() + d.retry_after)
        elif not d.permanent:
            self.down[n.target.key] = f"{_where(n)} failed: {d.error or 'delivery failed'}"
            self.strikes[n.target.channel] += 1
            if self.strikes[n.target.channel] >= TRIES_PER_SERVICE:
                self.down[n.target.channel] = f"{n.target.channel} failed {TRIES_PER_SERVICE} times in a row"


def _where(n: Notification) -> str:
    return f"{n.target.channel} {n.target.address or '(default)'}"


def _after_delivery(item: _Item, first_pending: set[str]) -> None:
    """Once an incident's first message (or a digest holding it) went, its updates may follow."""
    n = item.n
    if n.sequence == 0 and n.event == "firing":
        first_pending.discard(thread_key(n))
    elif n.event == "digest":
        for group in item.rec.doc.get("firing_groups") or []:
            first_pending.discard(f"{group}|{n.target.key}")


# ------------------------------------------------------------------------------------------ digests


def _repair_digests(store: Store, records: list[Record], now: pd.Timestamp) -> bool:
    """Members claimed for a digest that never made it into the outbox (a crash between the two writes)
    go back to pending once the lease has passed; True when something changed."""
    keys = {r.key for r in records}
    changed = False
    for r in records:
        if r.doc.get("status") != "digested" or r.doc.get("digest") in keys:
            continue
        if now - pd.Timestamp(r.doc.get("digested_at") or now) < LEASE:
            continue  # another run may be between claiming and queueing right now
        doc = {k: v for k, v in r.doc.items() if k not in ("digest", "digested_at")}
        doc["status"] = "pending"
        changed |= store.put("outbox", r.key, doc, version=r.version, expires_at=_ttl(KEEP))
    return changed


def _fold(store: Store, items: list[_Item], now: pd.Timestamp, limit: int, report: DeliveryReport) -> list[_Item]:
    """Fold each target's never-tried due notifications into digests when there are more than ``limit``.
    Only never-tried items are folded: one that was tried may already be with the service, and is
    checked and retried on its own."""
    by_target: dict[str, list[_Item]] = {}
    for it in items:
        doc = it.rec.doc
        if (doc.get("status") == "pending" and int(doc.get("attempts", 0)) == 0
                and it.n.event not in ("digest", SCHEDULED_DIGEST)
                and pd.Timestamp(doc.get("next_attempt") or now) <= now):
            by_target.setdefault(it.n.target.key, []).append(it)
    folded: set[str] = set()
    digests: list[_Item] = []
    for group in by_target.values():
        if len(group) <= limit or group[0].n.target.channel in UNFOLDED:
            continue
        for i in range(0, len(group), DIGEST_MAX):
            chunk = group[i:i + DIGEST_MAX]
            did, key = _digest_id([it.n for it in chunk])
            won = [it for it in chunk if store.put(
                "outbox", it.rec.key, {**it.rec.doc, "status": "digested", "digest": did, "digested_at": iso(now)},
                version=it.rec.version, expires_at=_ttl(KEEP))]
            if not won:
                continue  # another run took them
            n = digest_notification(did, key, [it.n for it in won], now, limit)
            if not store.put("outbox", did, _digest_doc(n, [it.n for it in won], now), version=None,
                             expires_at=_ttl(KEEP)):
                log.warning("digest %s exists already; its members go back to pending", did)
                for it in won:
                    rec = store.get("outbox", it.rec.key)
                    if rec is not None and rec.doc.get("digest") == did:
                        store.put("outbox", rec.key, {**it.rec.doc, "status": "pending"}, version=rec.version,
                                  expires_at=_ttl(KEEP))
                continue
            rec = store.get("outbox", did)
            if rec is None:  # pragma: no cover - expired between two writes
                continue
            report.digests += 1
            report.digested += len(won)
            folded |= {it.rec.key for it in won}
            digests.append(_Item(rec, n))
    if not digests:
        return items
    return digests + [it for it in items if it.rec.key not in folded]


_EVENT_WORD = {"firing": "new", "updated": "grown", "repeat": "still firing", "resolved": "resolved"}
_ALERT_KEYS = ("kind", "project", "project_name", "provider", "service", "region", "start", "detected_at",
               "severity", "observed", "expected", "lower", "upper", "currency", "score", "fingerprint", "summary")
_EVIDENCE_KEYS = ("metric", "node_count", "new_nodes", "gpu_nodes", "ongoing_until", "days", "forecast", "budget",
                  "month_to_date", "run_rate", "days_left", "forecast_low", "forecast_high", "interval", "basis",
                  "step_pct", "step_amount", "method")


def _evidence(alert: dict[str, Any]) -> dict[str, Any]:
    ev = alert.get("evidence")
    return ev if isinstance(ev, dict) else {}


def _slim(alert: dict[str, Any], event: str, group: str = "") -> dict[str, Any]:
    """An alert as a digest lists it: the numbers and the summary, not the full evidence; ``group`` is its
    incident, so a digest can carry per-incident answer menus."""
    out = {k: alert.get(k) for k in _ALERT_KEYS if k in alert}
    if group and event != "resolved":
        out["group"] = group
    ev = _evidence(alert)
    slim_ev: dict[str, Any] = {k: ev[k] for k in _EVIDENCE_KEYS if k in ev}
    if isinstance(ev.get("new_regions"), list):
        slim_ev["new_regions"] = ev["new_regions"][:5]
    if isinstance(ev.get("cost"), dict):
        slim_ev["cost"] = {k: ev["cost"][k] for k in ("observed", "expected", "lower", "upper") if k in ev["cost"]}
    out["evidence"] = slim_ev
    word = _EVENT_WORD.get(event, event)
    out["summary"] = f"{word.capitalize()}: {alert.get('summary') or ''}".strip()
    return out


def _money(alert: dict[str, Any]) -> tuple[float, float] | None:
    """(observed, expected) spend per day of an alert, where it is about money."""
    ev = _evidence(alert)
    kind = alert.get("kind")
    src = ev.get("cost") if kind == "mining_suspected" and isinstance(ev.get("cost"), dict) else (
        alert if kind in ("cost_spike", "threshold_exceeded") or (kind == "mining_suspected" and
                                                                   ev.get("metric") != "cpu_percent") else None)
    if src is None:
        return None
    obs, exp = finite(src.get("observed")), finite(src.get("expected"))
    return (obs, exp) if obs is not None and exp is not None else None


def _counts(c: Counter[str], words: dict[str, str] | None = None) -> str:
    return ", ".join(f"{(words or {}).get(k, k.replace('_', ' '))} {v:,}" for k, v in c.most_common())


def digest_notification(nid: str, group: str, members: list[Notification], now: pd.Timestamp,
                        limit: int = DIGEST_AFTER) -> Notification:
    """One message for many incidents on one target: counts by kind, severity, provider and event, then the
    most severe incidents (their latest news), each as a slim alert.  Renders through every notifier as a
    notification whose first "alert" is the summary."""
    latest: dict[str, Notification] = {}
    for m in members:
        if m.group_key not in latest or m.sequence >= latest[m.group_key].sequence:
            latest[m.group_key] = m
    leads = [(m, m.alerts[0] if m.alerts and isinstance(m.alerts[0], dict) else {}) for m in latest.values()]

    def order(x: tuple[Notification, dict[str, Any]]) -> tuple[int, int, float, str]:
        m, a = x
        money = _money(a)
        return (int(m.event == "resolved"), SEVERITY_ORDER.get(str(a.get("severity")), 9),
                -((money[0] - money[1]) if money else 0.0), m.title)

    leads.sort(key=order)
    open_leads = [a for m, a in leads if m.event != "resolved"]
    kinds = Counter(str(a.get("kind") or "alert") for _, a in leads)
    sevs = Counter(str(a.get("severity") or "?") for a in open_leads)
    provs = Counter(str(a.get("provider") or "?") for _, a in leads)
    events = Counter(m.event for m, _ in leads)
    projects = {str(a.get("project")) for _, a in leads}
    worst = min((str(a.get("severity")) for a in open_leads), key=lambda s: SEVERITY_ORDER.get(s, 9),
                default="info")
    money = [x for x in (_money(a) for a in open_leads) if x is not None]
    currencies = {str(a.get("currency")) for a in open_leads if _money(a) is not None}
    shown = min(len(leads), DIGEST_LIST)
    summary = (f"More than {limit} notifications were due for this channel in one run, so they come as one "
               f"message. Incidents: {_counts(events, _EVENT_WORD)}. By kind: {_counts(kinds)}. "
               + (f"Open by severity: {_counts(sevs)}. " if sevs else "")
               + f"By provider: {_counts(provs)}. The {shown} most severe are listed below"
               + ("; `costwatch outbox --all` and `costwatch report` list every one." if shown < len(leads) else "."))
    starts = [str(a["start"]) for _, a in leads if a.get("start")]
    detected = [str(a["detected_at"]) for _, a in leads if a.get("detected_at")]
    head: dict[str, Any] = {
        "kind": "digest", "project": "", "provider": ", ".join(sorted(provs)), "severity": worst,
        "project_name": f"{len(leads):,} incidents in {len(projects):,} projects", "summary": summary,
        "start": min(starts) if starts else None, "detected_at": max(detected) if detected else None,
        "observed": sum(o for o, _ in money) if money and len(currencies) == 1 else None,
        "expected": sum(e for _, e in money) if money and len(currencies) == 1 else None,
        "currency": currencies.pop() if len(currencies) == 1 else None, "evidence": {}, "fingerprint": None}
    owners = dict.fromkeys(o.strip() for m in members for o in (m.owner or "").split(",") if o.strip())
    mentions = dict.fromkeys(x.strip() for m in members for x in (m.mention or "").split(",") if x.strip())
    title = (f"costwatch digest: {len(leads):,} incidents ({_counts(events, _EVENT_WORD)}): {_counts(kinds)}")
    return Notification(
        id=nid, group_key=group, event="digest", target=members[0].target, title=title,
        alerts=[head] + [_slim(a, m.event, m.group_key) for m, a in leads[:DIGEST_LIST]], created_at=iso(now) or "",
        owner=", ".join(list(owners)[:10]) or None, mention=",".join(mentions) or None, sequence=0,
        labels={"digest": f"{len(leads)} incidents"})


def _already_delivered(notifier: Notifier, n: Notification) -> Delivery | None:
    """The service's own record of an earlier attempt, for notifiers that can look (Slack metadata)."""
    find = getattr(notifier, "find_delivered", None)
    if find is None:
        return None
    try:
        created = pd.Timestamp(n.created_at)
        found = find(dataclasses.replace(n, created_at=iso(created - CLOCK_SKEW) or n.created_at))
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
            max_attempts: int, *, tried: bool = True) -> None:
    doc: dict[str, Any] = dict(item.rec.doc)
    n = item.n
    attempts = int(doc.get("attempts", 0))
    if d.ok:
        doc.update(status="delivered", delivered_at=iso(now), ref=d.ref, last_error=d.error, permanent=False)
        report.delivered += 1
        report.working.add(n.target.channel)
        if n.sequence == 0 and n.event == "firing" and d.ref:
            store.put("thread", thread_key(n), {"ref": d.ref}, version=None, expires_at=_ttl(4 * KEEP))
        elif n.event == "digest" and d.ref:
            # the digest is the first message of the incidents it announced: their updates thread under it
            for group in doc.get("firing_groups") or []:
                store.put("thread", f"{group}|{n.target.key}", {"ref": d.ref}, version=None,
                          expires_at=_ttl(4 * KEEP))
    else:
        err = d.error or "delivery failed"
        report.errors.append(f"{n.target.channel} {n.target.address or '(default)'}: {err}")
        if d.permanent or attempts >= max_attempts:
            doc.update(status="failed", last_error=err, failed_at=iso(now), channel=n.target.channel,
                       permanent=bool(d.permanent))
            if d.permanent and tried:  # a notifier that refused, not one no longer configured
                report.broken.setdefault(n.target.channel, err)
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
                    "next_attempt": r.doc.get("next_attempt"), "last_error": r.doc.get("last_error"),
                    "digest": r.doc.get("digest")})
    return sorted(out, key=lambda d: d["created_at"] or "", reverse=True)


__all__ = ["DIGEST_AFTER", "PACE", "UNFOLDED", "DeliveryReport", "deliver", "digest_notification", "enqueue",
           "enqueue_many", "items", "thread_key"]
