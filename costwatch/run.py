"""``costwatch run``: the scheduled job.  Fetch, detect, decide, queue, deliver, record — in that order.

The order is what makes it safe to retry: notifications are queued (idempotently) before the incident
state that caused them is written, and delivered from the outbox afterwards, so a run killed at any point
is completed by the next one without losing or repeating a message.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import digest, fallback, feedback, incidents, metrics, outbox, silences, sources
from .config import Config
from .detect import Detection, detect
from .errors import ConfigError
from .notify import Notifier
from .routing import project_owners_from_tags
from .runlock import LOCK_SECONDS, RunLocked, acquire_lock, release_lock, require_lock
from .state import StateError, Store, open_store

log = logging.getLogger("costwatch.run")

ALERT_WINDOW = pd.Timedelta(days=14)   # alerts detected this far back can still be open incidents


@dataclass
class RunResult:
    as_of: pd.Timestamp
    detection: Detection | None
    alerts_active: int = 0
    incidents_open: int = 0
    queued: int = 0
    silenced: int = 0
    delivery: outbox.DeliveryReport = field(default_factory=outbox.DeliveryReport)
    provider_errors: list[str] = field(default_factory=list)
    provider_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    held: int = 0  # open incidents not judged over because their provider failed this run
    answered: int = 0  # alerts an owner's earlier answer holds back (costwatch.feedback)
    gathered: sources.Gathered | None = None  # what the providers delivered, failed and noted
    broken_channels: dict[str, str] = field(default_factory=dict)  # notifier -> why it fails for good
    # for costwatch.metrics: (kind, severity) per active alert, newest data per provider, failed parts
    alert_kinds: list[tuple[str, str]] = field(default_factory=list)
    data_end: dict[str, dict[str, float]] = field(default_factory=dict)
    provider_failed: dict[str, list[str]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)   # this run's stored metrics document

    @property
    def exit_code(self) -> int:
        """Non-zero only when a notification is stuck or a channel is broken: a provider gap is reported,
        not fatal."""
        return 1 if self.delivery.stuck or self.broken_channels else 0

    def lines(self) -> list[str]:
        out = [f"as of {self.as_of.isoformat()}: {self.alerts_active} active alert(s) in {self.incidents_open} "
               f"incident(s), {self.silenced} silenced"
               + (f", {self.answered} held back by owners' answers" if self.answered else "")
               + f"; queued {self.queued}; {self.delivery.summary()}"]
        got = self.gathered or sources.Gathered(pd.DataFrame(), pd.DataFrame(), stats=self.provider_stats)
        out += got.stat_lines()
        out += [f"missing data: {e}" for e in self.provider_errors]
        out += [f"warning: not read: {f}" for f in got.failures]
        out += [f"note: {n}" for n in got.notes]
        if self.held:
            out.append(f"kept open: {self.held} incident(s) whose data failed to arrive this run (a gap, not a "
                       "recovery)")
        out += [f"retried: {e}" for e in self.delivery.retried]
        out += [f"not delivered: {e}" for e in self.delivery.errors]
        out += [f"channel broken: notify.{ch}: {why} (the fallback owner is told)"
                for ch, why in self.broken_channels.items()]
        if self.delivery.stuck:
            out.append(f"{self.delivery.stuck} notification(s) stuck (failed, or pending past alerting.stuck_after): "
                       "see `costwatch outbox`")
        return out


def build_notifiers(cfg: Config) -> dict[str, Notifier]:
    from costwatch.notifiers import build

    out: dict[str, Notifier] = {}
    for name in ("slack", "email", "teams", "pagerduty", "webhook", "sns"):
        section = getattr(cfg.notify, name)
        if section is not None:
            out[name] = build(name, section, cfg)
    if cfg.notify.stdout:
        out["stdout"] = build("stdout", None, cfg)
    return out


def run_once(cfg: Config, *, now: pd.Timestamp | None = None, as_of: pd.Timestamp | None = None,
             providers: list[Any] | None = None, notifiers: dict[str, Notifier] | None = None,
             store: Store | None = None, charts: bool = True, lock_owner: str | None = None,
             sleep: Callable[[float], None] = time.sleep, provider_deadline: float | None = None,
             digest_after: int | None = None, metrics_textfile: Path | str | None = None) -> RunResult:
    """One scheduled run.  With ``lock_owner`` the run first takes the state lock and raises
    :class:`RunLocked` when another run holds it.

    ``provider_deadline``: seconds each provider may take (default ``alerting.provider_timeout``: long enough
    for a first 90-day backfill, short enough that a hung API cannot hold the hourly run); one that takes
    longer is reported as timed out and the others are used.
    ``digest_after``: more notifications than this due for one target in one run are sent as one digest
    (default ``alerting.digest_after``; 0 turns digests off).
    A state store that cannot be written (locked by another process, read-only) raises
    :class:`~costwatch.state.StateError` naming the file and the cause.
    Every run that took the lock stores its metrics document (:mod:`costwatch.metrics`), also when it
    fails; ``metrics_textfile`` also writes it as a node-exporter textfile."""
    if now is None:
        now = pd.Timestamp.now(tz="UTC")
    else:
        now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    end = as_of or now.floor("h")
    if providers is None:
        if not cfg.providers:
            raise ConfigError("costwatch run needs providers in the config")
        providers = [sources.build(p, cfg) for p in cfg.providers]
    if notifiers is None:
        notifiers = build_notifiers(cfg)  # a notifier config error fails before any work is done
    deadline = provider_deadline if provider_deadline is not None else _provider_deadline(cfg)
    digest = digest_after if digest_after is not None else _digest_after(cfg)
    own_store = store is None
    store = store or open_store(cfg.state)
    try:
        # the store itself turns SQLite's errors (locked, read-only, disk full) into a StateError naming the file
        if lock_owner is not None:
            require_lock(store, lock_owner)
        try:
            return _measured(cfg, now, end, providers, notifiers, store, charts, sleep, deadline, digest,
                             metrics_textfile)
        finally:
            if lock_owner is not None:
                try:
                    release_lock(store, lock_owner)
                except StateError as e:  # never hide the run's own outcome or error
                    log.warning("could not release the run lock (%s); it lapses after %d minutes",
                                type(e).__name__, LOCK_SECONDS // 60)
    finally:
        if own_store:
            store.close()


def _measured(cfg: Config, now: pd.Timestamp, end: pd.Timestamp, providers: list[Any],
              notifiers: dict[str, Notifier], store: Store, charts: bool, sleep: Callable[[float], None],
              deadline: float | None, digest: int, textfile: Path | str | None) -> RunResult:
    started, t0 = time.time(), time.monotonic()
    result: RunResult | None = None
    error: BaseException | None = None
    try:
        result = _run(cfg, now, end, providers, notifiers, store, charts, sleep, deadline, digest)
        return result
    except Exception as e:
        error = e
        raise
    finally:
        doc = metrics.record(store, result=result, now=now, started=started, finished=time.time(),
                             duration=time.monotonic() - t0, error=error)
        if result is not None:
            result.metrics = doc
        if textfile is not None:
            try:
                metrics.write_textfile(textfile, doc)
            except OSError as e:
                log.warning("metrics textfile %s not written: %s", textfile, e)


def _provider_deadline(cfg: Config) -> float:
    return float(cfg.alerting.provider_timeout_td.total_seconds())


def _digest_after(cfg: Config) -> int:
    return cfg.alerting.digest_after


def _run(cfg: Config, now: pd.Timestamp, end: pd.Timestamp, providers: list[Any], notifiers: dict[str, Notifier],
         store: Store, charts: bool, sleep: Callable[[float], None], deadline: float | None,
         digest_after: int) -> RunResult:
    since = end - ALERT_WINDOW
    start = since - pd.Timedelta(days=cfg.detection.lookback_days * 2 + 7)
    got = sources.collect(providers, start, end, deadline=deadline, now=end)  # as of the run's (or replay's) end
    det = detect(got.costs, got.usage if len(got.usage) else None, cfg, as_of=end, since=since,
                 findings=got.findings, planned=silences.planned(store))
    result = RunResult(as_of=det.as_of, detection=det, provider_errors=list(got.errors),
                       provider_stats=got.stats, gathered=got, provider_failed=dict(got.failed),
                       data_end=metrics.data_ends(got.costs, got.usage))
    if det.alerts and cfg.kubernetes.clusters:
        from costwatch.providers.kubernetes import attach, contexts_from_config

        contexts = contexts_from_config(cfg)  # never raises for a cluster: an unreadable one says why
        attach(det.alerts, contexts)
        result.provider_errors += [f"kubernetes {c.name}: {c.status}" for c in contexts if not c.available]
    tag_owners = project_owners_from_tags(got.costs, cfg.alerting.owner_tags)
    cfg = det.config or cfg  # with the monitors' virtual projects: their owners are routed like projects'
    quiet = silences.active(store, now)
    owed, answered = feedback.apply(det.alerts, feedback.load(store, now))
    result.answered = len(answered)
    # a monitor's incidents are fed by the providers of the projects it matched
    feeds = {**got.providers_of, **{m: set().union(*(got.providers_of.get(p, set()) for p in projects))
                                    for m, projects in det.monitors.items()}}
    p = incidents.plan(owed, store, cfg, now, as_of=det.as_of, tag_owners=tag_owners, silences=quiet,
                       data_end=incidents.data_ends(got.costs, got.usage), providers_of=feeds,
                       failed=got.failed)
    result.silenced = len(p.silenced)
    result.incidents_open = p.open_groups
    result.held = p.held
    result.alert_kinds = [(str(a.get("kind")), str(a.get("severity"))) for _, doc in p.incidents.values()
                          if doc.get("status") == "open" for a in doc.get("alerts", []) if isinstance(a, dict)]
    result.alerts_active = len(result.alert_kinds)
    if charts:
        _attach_charts(det, p, cfg)
    result.queued, digests, folded = outbox.enqueue_many(store, p.notifications, now, digest_after)
    result.conflicts = incidents.commit(store, p)
    # the scheduled summary, once per target and period (its id is derived from both): see costwatch.digest
    result.queued += sum(outbox.enqueue(store, n, now)
                         for n in digest.plan(cfg, det.projects, got.costs, store, now, tag_owners))
    stuck_after = pd.Timedelta(cfg.alerting.stuck_after_td)
    result.delivery = outbox.deliver(
        store, notifiers, now, max_attempts=cfg.alerting.max_attempts, stuck_after=stuck_after, sleep=sleep,
        digest_after=digest_after, retry_failed=set(fallback.broken(store)))
    result.delivery.digests += digests
    result.delivery.digested += folded
    _tell_broken(cfg, store, notifiers, now, result, stuck_after, sleep)
    return result


def _tell_broken(cfg: Config, store: Store, notifiers: dict[str, Notifier], now: pd.Timestamp, result: RunResult,
                 stuck_after: pd.Timedelta, sleep: Callable[[float], None]) -> None:
    """A channel that failed for good is told to the fallback owner through another, in this same run."""
    broken = fallback.update(store, result.delivery, now)
    result.broken_channels = {ch: str(doc.get("reason") or "") for ch, doc in broken.items()}
    notices = fallback.notifications(cfg, broken, now, set(notifiers))
    new = [n for n in notices if outbox.enqueue(store, n, now)]
    result.queued += len(new)
    if new:
        result.delivery.merge(outbox.deliver(store, notifiers, now, max_attempts=cfg.alerting.max_attempts,
                                             stuck_after=stuck_after, sleep=sleep, digest_after=0,
                                             only={n.id for n in new}))


def _chart_dir(cfg: Config) -> Path:
    if cfg.state.backend == "sqlite":
        return Path(cfg.state.path).parent / "charts"
    return Path(tempfile.gettempdir()) / "costwatch-charts"


def _attach_charts(det: Detection, p: incidents.Plan, cfg: Config) -> None:
    """Draw one PNG per incident message that shows something new (not for repeats and resolves); a
    chart that cannot be drawn is skipped, never a reason not to notify."""
    wanted = (cfg.notify.slack is not None and cfg.notify.slack.charts and cfg.notify.slack.token is not None) \
        or cfg.notify.email is not None
    if not wanted:
        return
    from .charts import alert_chart

    by_fp = {a.fingerprint: a for a in det.alerts}
    drawn: dict[str, str] = {}
    for n in p.notifications:
        if n.event not in ("firing", "updated") or n.target.channel == "stdout" or not n.alerts:
            continue
        fp = str(n.alerts[0].get("fingerprint"))
        if fp not in drawn and fp in by_fp:
            try:
                path = _chart_dir(cfg) / f"{fp}-{n.group_key.replace('#', '-')}-{n.sequence}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                drawn[fp] = str(alert_chart(det, by_fp[fp], path))
            except Exception as e:
                log.warning("chart for %s not drawn: %s", fp, type(e).__name__)
                drawn[fp] = ""
        n.chart = drawn.get(fp) or None


__all__ = ["RunLocked", "RunResult", "acquire_lock", "build_notifiers", "release_lock", "run_once"]
