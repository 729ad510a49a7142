"""The ``costwatch`` command line.

Every expected failure (a missing file, a bad CSV row, a bad config key) ends with exit code 2 and one
message that names the file and what is wrong; ``--debug`` adds the traceback for bug reports.  ``run``
finding the state lock held by another run is not a failure of the input: it exits 75 (try again later).
"""

from __future__ import annotations

import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import click
import pandas as pd

from .errors import ConfigError, CostwatchError
from .safetext import terminal_safe

EXIT_USAGE = 2
EXIT_LOCKED = 75  # sysexits' EX_TEMPFAIL: another run holds the state lock; try again later


class _Ctx:
    debug = False


def _echo(text: str, err: bool = False) -> None:
    """Every line with data or user text in it (names, paths, reasons, errors) goes out through here:
    control characters and bidi overrides are shown as escapes, never sent to the terminal."""
    click.echo(terminal_safe(text, newlines=True), err=err)


def _fail(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    _echo(f"costwatch: error: {exc}", err=True)
    sys.exit(EXIT_USAGE)


def parse_since(value: str | None, as_of: pd.Timestamp | None = None) -> pd.Timedelta | pd.Timestamp | None:
    """``28d``, ``36h``, ``2w`` or an ISO date/time; a window is relative to ``as_of``."""
    if value is None:
        return None
    v = value.strip().lower()
    units = {"h": "hours", "d": "days", "w": "weeks"}
    if v and v[-1] in units and v[:-1].isdigit():
        return pd.Timedelta(**{units[v[-1]]: int(v[:-1])})
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(f"{value!r}: use a window like 28d, 36h, 2w or an ISO time") from e
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _as_of(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as e:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from e
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="costwatch")
def cli(debug: bool) -> None:
    """Catch hijacked cloud compute (cryptomining) and runaway spend across AWS, GCP and Azure."""
    _Ctx.debug = debug


def _register() -> None:
    from .k8s_cli import k8s

    cli.add_command(k8s)


_register()


@cli.command()
@click.option("--costs", "costs", multiple=True, type=click.Path(path_type=Path),
              help="FOCUS cost export: CSV, CSV.gz, Parquet or a folder of them. Repeatable.")
@click.option("--usage", "usage", multiple=True, type=click.Path(path_type=Path),
              help="CPU usage CSV (timestamp,provider,project,node,cpu_utilization[,cluster,region,instance_type]).")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="costwatch YAML config.")
@click.option("--since", default="28d", show_default=True, help="Window: 28d, 36h, 2w or an ISO time.")
@click.option("--as-of", "as_of", default=None, help="Evaluate as if now were this ISO time (UTC).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown", "html"]), default="table",
              show_default=True, help="html: one self-contained page with a chart per alert (works offline).")
@click.option("--output", type=click.Path(path_type=Path), help="Write the report here ('-' or none: stdout).")
def report(costs: tuple[Path, ...], usage: tuple[Path, ...], config_path: Path | None, since: str,
           as_of: str | None, fmt: str, output: Path | None) -> None:
    """Per-project spend, bands, forecasts and every alert detected in the window."""
    window, now = parse_since(since), _as_of(as_of)  # bad flags fail before any data is read
    try:
        cfg = _load_cfg(config_path)
        _run_report(cfg, list(costs), list(usage), window, now, fmt, output)
    except CostwatchError as e:
        _fail(e, _Ctx.debug)


def _load_cfg(path: Path | None) -> Any:
    from .config import Config, load_config

    return load_config(path) if path else Config()


def _providers(cfg: Any, cost_paths: list[Any], usage_paths: list[Any]) -> list[Any]:
    """Files named on the command line win; otherwise every provider in the config."""
    from . import sources

    if cost_paths or usage_paths:
        from costwatch.providers.files import FilesProvider

        return [FilesProvider(costs=cost_paths or None, usage=usage_paths or None)]
    if not cfg.providers:
        raise ConfigError("nothing to read: pass --costs and/or --usage, or a --config with providers")
    return [sources.build(p, cfg) for p in cfg.providers]


def _run_report(cfg: Any, cost_paths: list[Any], usage_paths: list[Any],
                since: pd.Timedelta | pd.Timestamp | None, as_of: pd.Timestamp | None, fmt: str,
                output: Path | None) -> None:
    from .report import render, renderable
    from .safetext import plain_console

    det, _ = _gather_detect(cfg, cost_paths, usage_paths, since, as_of)
    if output is not None and str(output) == "-":
        output = None
    if output is None and fmt == "table":
        plain_console().print(renderable(det))
        return
    text = _render_html(det) if fmt == "html" else render(det, fmt)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as e:
            raise CostwatchError(f"{output}: cannot write the report: {e.strerror}") from e
        _echo(f"wrote {fmt} report to {output} ({len(det.alerts)} alerts)", err=True)


def _gather_detect(cfg: Any, cost_paths: list[Any], usage_paths: list[Any],
                   since: pd.Timedelta | pd.Timestamp | None, as_of: pd.Timestamp | None) -> tuple[Any, Any]:
    """Read, detect and annotate as ``report`` shows it; returns the detection and what was gathered."""
    from . import sources
    from .detect import detect
    from .routing import set_report_owners

    providers = _providers(cfg, cost_paths, usage_paths)
    end = as_of or pd.Timestamp.now(tz="UTC").floor("h")
    # bands need history before the window: fetch the lookback on top of it
    start = (since if isinstance(since, pd.Timestamp) else end - (since or pd.Timedelta(days=28)))
    start = start - pd.Timedelta(days=cfg.detection.lookback_days * 2 + 7)
    # files named on the command line are input: a broken one is an error (exit 2).  Providers from the config
    # degrade as in `run`: what failed is named, the rest reported; only all of them failing is an error.
    # Providers answer as of the report's end (--as-of when replaying).
    got = (sources.gather(providers, start, end, strict=True, now=end) if cost_paths or usage_paths
           else sources.collect(providers, start, end, now=end))
    det = detect(got.costs, got.usage if len(got.usage) else None, cfg, as_of=as_of, since=since,
                 findings=got.findings, planned=_planned_marks(cfg))
    _mark_silenced(det, cfg)
    set_report_owners(det.projects, got.costs, det.config or cfg)  # the owner `run` would route to (monitors too)
    if cfg.kubernetes.clusters and det.alerts:
        from costwatch.providers.kubernetes import attach, contexts_from_config

        contexts = contexts_from_config(cfg)
        attach(det.alerts, contexts)
        det.notes.extend(f"kubernetes {c.name}: {c.status}" for c in contexts if not c.available)
    det.notes.extend(f"missing data: {e}" for e in got.errors)
    det.notes.extend(got.stat_lines() + got.notes)
    det.errors = got.error_records()
    for w in got.warnings():
        _echo(f"costwatch: warning: {w}", err=True)
    return det, got


def _render_html(det: Any) -> str:
    from .html_report import render as html_render

    return html_render(det)


def _planned_marks(cfg: Any) -> list[Any]:
    """Planned-activity marks from the state store (ended ones included: the level they accepted stays
    accepted), when there is one; a report never creates state, and an unreadable store means none."""
    from pathlib import Path as _P

    from . import silences
    from .state import open_store

    if cfg.state.backend == "sqlite" and not _P(cfg.state.path).exists():
        return []
    try:
        store = open_store(cfg.state)
        try:
            return silences.planned(store)
        finally:
            store.close()
    except CostwatchError:
        return []  # _mark_silenced says why in the report's notes


def _mark_silenced(det: Any, cfg: Any) -> None:
    """Show silences and planned-activity marks from the state store in the report, when there is one;
    a report never creates state."""
    from dataclasses import asdict
    from pathlib import Path as _P

    from . import feedback, silences
    from .state import open_store

    if cfg.state.backend == "sqlite" and not _P(cfg.state.path).exists():
        return
    try:
        store = open_store(cfg.state)
        quiet = silences.active(store, pd.Timestamp.now(tz="UTC"))
        answers = feedback.load(store, pd.Timestamp.now(tz="UTC"))
        store.close()
    except CostwatchError as e:
        det.notes.append(f"silences not shown: {e}")
        return
    _, held = feedback.apply(det.alerts, answers)  # marks the held alerts' evidence; the report keeps them all
    det.notes.extend(f"owner answer {feedback.describe(fb)} ({sum(h is fb for _, h in held)} alert(s) held back)"
                     for fb in answers)
    for s in quiet:
        hits = [a for a in det.alerts if s.matches(a, pd.Timestamp.now(tz="UTC"))]
        for a in hits:
            a.evidence["silence"] = asdict(s)
        det.notes.append(f"{'planned activity' if s.planned else 'silence'} {s.id}: {s.project}"
                         f"{' ' + s.kind if s.kind else ''} until {s.until} — {s.reason} ({len(hits)} alert(s))")


@cli.command("digest")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="costwatch YAML config (providers, owners, notify, state, alerting.digest).")
@click.option("--owner", default=None, help="Only the digests that reach this owner's targets.")
@click.option("--dry-run", is_flag=True, help="Print the digests as text; queue and send nothing.")
@click.option("--as-of", "as_of", default=None, help="As if now were this ISO time (UTC).")
def digest_cmd(config_path: Path, owner: str | None, dry_run: bool, as_of: str | None) -> None:
    """Preview, or send now, this period's spend digest per owner (alerting.digest; default weekly, Monday
    09:00 UTC).  Sending uses the outbox with the same ids as `costwatch run`: a target already told this
    period is not told again."""
    now = _as_of(as_of) or pd.Timestamp.now(tz="UTC")
    try:
        cfg = _load_cfg(config_path)
        lines = _digest(cfg, owner, dry_run, now)
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    for line in lines:
        _echo(line, err=not dry_run)


def _digest(cfg: Any, owner: str | None, dry_run: bool, now: pd.Timestamp) -> list[str]:
    from . import digest, outbox
    from .config import DigestConfig
    from .routing import project_owners_from_tags
    from .run import build_notifiers
    from .state import open_store

    if cfg.alerting.digest is None:
        cfg.alerting.digest = DigestConfig()
    notifiers = {} if dry_run else build_notifiers(cfg)
    det, got = _gather_detect(cfg, [], [], pd.Timedelta(days=28), now.floor("h"))
    tags = project_owners_from_tags(got.costs, cfg.alerting.owner_tags)
    store = open_store(cfg.state)
    try:
        todo = digest.plan(cfg, det.projects, got.costs, store, now, tags, only_owner=owner, queued_too=dry_run)
        if dry_run:
            return [f"--- to {n.target.key}\n{digest.text(digest.of(n))}" for n in todo] or ["no digest to show"]
        new = {n.id for n in todo if outbox.enqueue(store, n, now)}
        if not new:
            return ["costwatch: every digest of this period was already queued; nothing sent"]
        report = outbox.deliver(store, notifiers, now, max_attempts=cfg.alerting.max_attempts, digest_after=0,
                                only=new)
    finally:
        store.close()
    return [f"costwatch: queued {len(new)} digest(s); {report.summary()}", *report.errors]


@cli.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("costwatch-demo"),
              show_default=True, help="Where to write the demo data, charts and report.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "markdown"]), default="table",
              show_default=True)
@click.option("--no-charts", is_flag=True, help="Skip the PNG charts.")
def demo(out_dir: Path, fmt: str, no_charts: bool) -> None:
    """Generate the embedded multi-cloud demo, detect, print the report and write charts."""
    try:
        from .demo import run_demo

        run_demo(out_dir, fmt=fmt, charts=not no_charts)
    except CostwatchError as e:
        _fail(e, _Ctx.debug)


@cli.command("check-config")
@click.argument("path", type=click.Path(path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file: exit 0 and a summary, or exit 2 naming the key and line."""
    try:
        cfg = _load_cfg(path)
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    monitors = f"{len(cfg.monitors)} monitor(s), " if cfg.monitors else ""
    _echo(f"{path}: OK — {len(cfg.providers)} provider(s), {len(cfg.projects)} project(s), {monitors}"
               f"band method {cfg.detection.band_method}, sensitivity {cfg.detection.sensitivity}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="costwatch YAML config (providers, owners, notify, state).")
@click.option("--as-of", "as_of", default=None, help="Evaluate as if now were this ISO time (UTC).")
@click.option("--no-charts", is_flag=True, help="Send without PNG charts.")
@click.option("--metrics-textfile", "textfile", type=click.Path(path_type=Path), default=None,
              help="Also write the run's metrics here for node-exporter's textfile collector (atomically).")
def run(config_path: Path, as_of: str | None, no_charts: bool, textfile: Path | None) -> None:
    """The scheduled job: fetch, detect, notify owners once per incident update, record state.

    Exit 0 when everything was delivered or is waiting for a retry; 1 when a notification is stuck
    (failed, or undelivered past alerting.stuck_after) or a channel fails for good (the fallback owner is
    told); 2 for a config or input error; 75 when another run holds the state lock (this one did nothing)."""
    from .runlock import RunLocked

    when = _as_of(as_of)
    try:
        from .run import run_once

        cfg = _load_cfg(config_path)
        import os
        import socket

        result = run_once(cfg, now=when, as_of=when, charts=not no_charts,
                          lock_owner=f"{socket.gethostname()}:{os.getpid()}", metrics_textfile=textfile)
    except RunLocked as e:
        click.echo(f"costwatch: {e}", err=True)
        sys.exit(EXIT_LOCKED)
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    for line in result.lines():
        _echo(f"costwatch: {line}", err=True)
    sys.exit(result.exit_code)


@cli.command("metrics")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="Config naming the state store.")
def metrics_cmd(config_path: Path) -> None:
    """The last run's metrics as Prometheus text (names prefixed costwatch_); exit 1 when no run is recorded."""
    from . import metrics

    try:
        store = _store(config_path)
        try:
            doc = metrics.load(store)
        finally:
            store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    if doc is None:
        click.echo("costwatch: no run recorded in this state store yet", err=True)
        sys.exit(1)
    click.echo(metrics.text(doc), nl=False)


def _store(config_path: Path | None) -> Any:
    from .state import open_store

    return open_store(_load_cfg(config_path).state)


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
@click.option("--project", required=True, help="Project id or name (or * for every project).")
@click.option("--kind", default=None, help="Only this alert kind (default: every kind).")
@click.option("--until", "until", default=None, help="ISO time (UTC) the silence ends.")
@click.option("--for", "duration", default=None, help="Or a duration: 4h, 2d, 1w.")
@click.option("--reason", required=True, help="Why, for whoever wonders where the alerts went.")
@click.option("--planned", is_flag=True, help="Mark as planned activity (a load test, a migration).")
def silence(config_path: Path | None, project: str, kind: str | None, until: str | None, duration: str | None,
            reason: str, planned: bool) -> None:
    """Silence a project's alerts (or one kind of them) until a time; shown in reports and run summaries."""
    from . import silences
    from .config import parse_duration

    now = pd.Timestamp.now(tz="UTC")
    try:
        if (until is None) == (duration is None):
            raise ConfigError("silence: give exactly one of --until TIME or --for DURATION")
        try:
            end = _as_of(until) if until else now + pd.Timedelta(parse_duration(duration or ""))
        except ValueError as e:
            raise ConfigError(f"silence: --for {duration!r}: {e}") from None
        if end is None:
            raise ConfigError("silence: --until needs an ISO 8601 time")
        store = _store(config_path)
        s = silences.add(store, project=project, until=end, reason=reason, kind=kind, planned=planned, now=now)
        store.close()
    except (CostwatchError, click.BadParameter) as e:
        _fail(e, _Ctx.debug)
    what = "planned activity" if s.planned else "silence"
    _echo(f"{what} {s.id}: {s.project}{' ' + s.kind if s.kind else ''} until {s.until} — {s.reason}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
@click.option("--project", required=True, help="Project id or name whose open incidents to acknowledge.")
@click.option("--by", "by", default=None, help="Who acknowledges (default: $USER).")
def ack(config_path: Path | None, project: str, by: str | None) -> None:
    """Acknowledge a project's open incidents: no more repeats; updates if they grow, and the resolve, still go."""
    import getpass

    from .incidents import acknowledge

    try:
        store = _store(config_path)
        done = acknowledge(store, project, by or getpass.getuser(), pd.Timestamp.now(tz="UTC"))
        store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    if not done:
        _fail(ConfigError(f"no open incident for {project!r}; see `costwatch outbox --all`"), _Ctx.debug)
    for t in done:
        _echo(f"acknowledged: {t}")


@cli.command("silences")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
def list_silences(config_path: Path | None) -> None:
    """Active silences and planned-activity marks."""
    from . import silences

    try:
        store = _store(config_path)
        active = silences.active(store)
        store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    if not active:
        click.echo("no active silences")
    for s in active:
        _echo(f"{s.id}  {'planned ' if s.planned else ''}{s.project}{' ' + s.kind if s.kind else ''}"
                   f"  until {s.until}  {s.reason}")


@cli.command()
@click.argument("silence_id")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
def unsilence(silence_id: str, config_path: Path | None) -> None:
    """End a silence now."""
    from . import silences

    try:
        store = _store(config_path)
        found = silences.remove(store, silence_id)
        store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    if not found:
        _fail(ConfigError(f"no silence {silence_id!r}; see `costwatch silences`"), _Ctx.debug)
    _echo(f"silence {silence_id} removed")


@cli.command("outbox")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
@click.option("--all", "show_all", is_flag=True, help="Include delivered notifications.")
def show_outbox(config_path: Path | None, show_all: bool) -> None:
    """Notifications waiting, failed (and with --all, delivered), with their last error."""
    from . import outbox

    try:
        store = _store(config_path)
        every = outbox.items(store)
        store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    # a flood folds thousands of notifications into a few digests: list the digests with their size, and
    # the members themselves only with --all (their fate is the digest's)
    folded = Counter(r["digest"] for r in every if r["status"] == "digested")
    rows = [r for r in every if show_all or r["status"] not in ("delivered", "digested")]
    if not rows:
        click.echo("outbox empty" if show_all else "nothing waiting or failed")
    for r in rows:
        size = f" [digest of {folded[r['id']]}]" if folded.get(r["id"]) else ""
        if r["status"] == "digested":
            tail = f"  (in digest {r['digest']})"
        elif r["status"] == "delivered":
            tail = ""
        else:
            tail = f"  (attempts {r['attempts']}, next {r['next_attempt']}: {r['last_error']})"
        _echo(f"{r['status']:<9} {r['created_at']} {r['event']:<8} {r['target']}  {r['title']}{size}{tail}")


@cli.command("feedback")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config naming the state store.")
@click.option("--project", default=None, help="Only this project (id or name).")
def list_feedback(config_path: Path | None, project: str | None) -> None:
    """Owners' answers ("expected", "not an anomaly") still in force, and what they hold back."""
    from . import feedback

    try:
        store = _store(config_path)
        given = feedback.load(store, pd.Timestamp.now(tz="UTC"), project=project)
        store.close()
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    if not given:
        _echo("no answers" + (f" for {project}" if project else ""))
    for fb in given:
        _echo(feedback.describe(fb))


@cli.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True,
              help="Config with notify.slack.token, notify.slack.signing_secret and the state store.")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")  # noqa: S104
@click.option("--port", default=3000, show_default=True, type=click.IntRange(1, 65535))
def serve(config_path: Path, host: str, port: int) -> None:
    """Serve the Slack app that takes owners' answers: POST /slack/events (Slack's request URL), GET /healthz."""
    try:
        cfg = _load_cfg(config_path)
        try:
            import slack_bolt  # noqa: F401 - imported by asgi_app; checked here to name the extra
            import uvicorn  # noqa: F401

            from .surfaces.serve import asgi_app
            from .surfaces.serve import serve as run_server
        except ImportError as e:
            raise ConfigError(f"costwatch serve needs the 'serve' extra: pip install 'costwatch[serve]' ({e.name} "
                              "is missing)") from None
        from .state import open_store

        app = asgi_app(cfg, open_store(cfg.state))  # fails here, exit 2, on a missing token or signing secret
    except CostwatchError as e:
        _fail(e, _Ctx.debug)
    click.echo(f"costwatch: serving Slack answers on http://{host}:{port}/slack/events", err=True)
    run_server(app, host=host, port=port)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="costwatch", standalone_mode=True)
    except CostwatchError as e:  # pragma: no cover - commands catch their own
        _fail(e, _Ctx.debug)
    except Exception as e:
        if _Ctx.debug:
            raise
        _echo(f"costwatch: internal error: {type(e).__name__}: {e} (run with --debug for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
