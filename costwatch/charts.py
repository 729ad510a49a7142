"""PNG charts of an alert: daily cost inside its band, the spike, and the CPU of the nodes involved.

matplotlib is imported lazily with the Agg backend so the CLI and the serverless handler never pay for it
unless a chart is asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .alerts import Alert
from .detect import Detection, SeriesBands


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:80] or "alert"


def _label(text: str, limit: int = 100) -> str:
    """Chart text from data: no control characters, no mathtext (``$`` would be parsed), bounded."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", text).replace("$", r"\$")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _series_row(sb: SeriesBands | None, project: str, category: str | None, currency: str | None = None) -> int | None:
    """The alert's own series: a project billed in two currencies has one per currency, never a sum."""
    if sb is None or not len(sb.matrix.keys):
        return None
    keys = sb.matrix.keys
    sel = keys["project_id"].astype(str) == project
    if category is not None and "service_category" in keys:
        sel &= keys["service_category"].astype(str) == category
    if currency and "currency" in keys:
        sel &= keys["currency"].astype(str) == currency
    idx = np.flatnonzero(sel.to_numpy())
    return int(idx[0]) if idx.size else None


def alert_chart(det: Detection, alert: Alert, path: Path) -> Path:
    """Draw one alert; returns the written path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nodes = [n["node"] for n in alert.evidence.get("nodes", [])][:6]
    has_cpu = bool(nodes) and det.cpu is not None
    fig, axes = plt.subplots(2 if has_cpu else 1, 1, figsize=(11, 7 if has_cpu else 4), squeeze=False)
    ax = axes[0][0]
    cat = alert.service if alert.kind in ("cost_spike", "mining_suspected") else None
    sb = det.categories if cat else det.totals
    i = _series_row(sb, alert.project, cat, alert.currency)
    if i is None and cat:
        sb, i = det.totals, _series_row(det.totals, alert.project, None, alert.currency)
    if sb is not None and i is not None:
        m, b = sb.matrix, sb.bands
        days = m.days.tz_convert(None)
        ax.fill_between(days, b.lower[i], b.upper[i], step="mid", alpha=0.25, color="tab:blue",
                        label="normal band")
        ax.plot(days, b.expected[i], color="tab:blue", lw=1, ls="--", label="expected")
        ax.plot(days, m.values[i], color="black", lw=1.4, marker=".", label="daily cost")
        hits = sb.anomalous[i]
        ax.scatter(days[hits], m.values[i][hits], color="red", zorder=5, s=40, label="out of band")
        ax.set_ylabel(f"{alert.currency} / day")
        ax.set_title(_label(f"{alert.kind}: {alert.project_name} ({alert.provider}) — {cat or 'all services'}"))
        ax.axvline(alert.start.tz_convert(None), color="orange", lw=1, label="start")
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no cost data for this project", ha="center", transform=ax.transAxes)
    if has_cpu and det.cpu is not None and det.cpu_features is not None:
        cx = axes[1][0]
        cm, f = det.cpu, det.cpu_features
        lo = max(alert.start - pd.Timedelta(days=4), cm.hours[0])
        cols = (cm.hours >= lo)
        hours = cm.hours[cols].tz_convert(None)
        in_project = (cm.nodes["project"].astype(str) == alert.project).to_numpy()
        for node in nodes:
            r = np.flatnonzero((cm.nodes["node"] == node).to_numpy() & in_project)
            if not r.size:
                continue
            k = int(r[0])
            vals = cm.values[k, cols]
            line, = cx.plot(hours, vals, lw=1.2, label=node)
            # the usual shape, only where the node was running
            prof = np.where(np.isnan(vals), np.nan, f.profile[k, cols])
            spread = 2 * f.spread[k, cols]
            cx.fill_between(hours, np.clip(prof - spread, 0, 100), np.clip(prof + spread, 0, 100),
                            color=line.get_color(), alpha=0.12)
        cx.axvline(alert.start.tz_convert(None), color="orange", lw=1, label="start")
        cx.axvline(alert.detected_at.tz_convert(None), color="red", lw=1, ls=":", label="detected")
        cx.set_ylim(0, 105)
        cx.set_ylabel("CPU % (hourly)")
        cx.set_title("node CPU against its usual daily shape (shaded)")
        cx.legend(loc="lower center", fontsize=7, ncol=3, framealpha=0.6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_charts(det: Detection, out_dir: Path, limit: int = 12) -> list[Path]:
    """One PNG per alert (most severe first); charts from an earlier run are removed first."""
    if out_dir.is_dir():
        for old in out_dir.glob("*.png"):
            old.unlink()
    written = []
    for n, a in enumerate(det.alerts[:limit]):
        name = f"{n + 1:02d}-{a.kind}-{_safe(a.project_name)}.png"
        written.append(alert_chart(det, a, out_dir / name))
    return written
