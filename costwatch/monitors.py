"""Monitors: named scopes over the cost data (``monitors:`` in the config), watched like projects.

FinOps teams slice spend by team tag, Kubernetes namespace or label, environment, service or region rather than
by billing project.  A monitor is such a slice, with an owner and the same detection knobs as a project.

Invariants:

* A monitor is a *virtual project* ``monitor:<name>`` (provider ``monitor``): its daily rows (one per monitor,
  UTC day, currency, charge category and sign, summed from the rows its selector matches) are appended to the
  cost frame, and its settings (a ``MonitorConfig``, which is a ``ProjectConfig``) to ``cfg.projects``.  So
  detection's bands, cost alerts, thresholds, budgets and summaries, and routing's owner lookup, treat it
  exactly like a project, unchanged.  A credit stays a credit and a negative usage row stays out of the band,
  as for projects: the sign and charge category are part of each summed row's identity.
* Monitors are cost-only: they get one total series (no per-category series) and never mining alerts, so a
  miner is told once, on its project.
* Selection never loops over rows in Python: rows are reduced to *profiles* (distinct provider, project, name,
  service, category, region and tag set), selectors and ``for_each`` are evaluated once per profile (tag
  values once per distinct tag set), and a monitor's sums are bincounts over the cells (profile x day x
  currency x charge x sign) of its profiles.
* Without ``monitors:`` nothing changes: the same frame and config objects go on, fingerprints included.

Kubernetes: there is no namespace column in the normalized data; billing exports carry it as a cost tag.
``namespace`` reads the first of ``NAMESPACE_TAGS`` present on a row, ``labels: {app: web}`` the first of
``k8s-label/app`` (GKE cost allocation) and ``kubernetes_label_app`` (the Kubecost / OpenCost convention for
out-of-cluster resources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .alerts import Alert
from .config import Config, MonitorConfig, MonitorSelector
from .model import normalize_costs

PREFIX = "monitor:"
PROVIDER = "monitor"
# where a row's Kubernetes namespace is found, first present wins: costwatch's own and OpenCost's plain key,
# GKE cost allocation (k8s-namespace), AWS split cost allocation for EKS (aws:eks:namespace, as the CUR 2.0 /
# FOCUS export spells it too), the Kubecost out-of-cluster convention and the Kubernetes label
NAMESPACE_TAGS: tuple[str, ...] = ("namespace", "k8s-namespace", "aws:eks:namespace", "aws_eks_namespace",
                                   "kubernetes_namespace", "kubernetes-namespace", "kubernetes.io/namespace")
LABEL_TAG_FORMS: tuple[str, ...] = ("k8s-label/{}", "kubernetes_label_{}")
_COLUMNS = ("provider", "project_id", "project_name", "service", "service_category", "region")
_SHOWN = 5  # values named in a note
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Monitor:
    """One monitor as detection sees it (a template's expansion is one per value)."""

    pid: str                    # the virtual project id, ``monitor:<name>``
    config: MonitorConfig       # name and owner filled in
    selector: dict[str, Any]    # what it matches, as shown in evidence and reports
    template: str | None = None  # the template's name (with ``{value}``), for an expanded monitor


@dataclass
class Selection:
    """The monitors of one detection run and what they add to it."""

    monitors: list[Monitor]
    config: Config              # cfg plus one virtual project per monitor
    costs: pd.DataFrame         # the cost frame plus the monitors' rows (after the first ``n_base`` rows)
    notes: list[str] = field(default_factory=list)
    n_base: int = 0
    profile: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # of each base row
    members: dict[str, np.ndarray] = field(default_factory=dict)  # pid -> its profiles
    n_profiles: int = 0
    project_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # of each profile
    project_ids: list[str | None] = field(default_factory=list)

    @property
    def pids(self) -> set[str]:
        return {m.pid for m in self.monitors}

    @property
    def projects(self) -> dict[str, list[str]]:
        """Monitor -> the projects whose rows it matched: its incidents depend on their exports."""
        if not self.monitors:
            return {}
        ids = np.asarray(self.project_ids, dtype=object)
        return {pid: sorted(set(ids[self.project_of[idx]].tolist()) - {None}) for pid, idx in self.members.items()}

    def projects_only(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` (a slice of ``costs``) without the monitors' rows."""
        return frame[frame.index < self.n_base] if self.monitors else frame

    def rows(self, pid: str, frame: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``frame`` (a slice of ``costs``, labelled by position) that monitor ``pid`` matches:
        the real rows, with their resources and regions, for an alert's evidence."""
        lut = np.zeros(self.n_profiles + 1, dtype=bool)
        lut[self.members[pid]] = True
        labels = frame.index.to_numpy()
        base = labels < self.n_base
        mask = np.zeros(len(frame), dtype=bool)
        mask[base] = lut[self.profile[labels[base]]]
        return frame[mask]

    def annotate(self, alerts: list[Alert], projects: list[dict[str, Any]]) -> None:
        """Say on each monitor alert and report row which monitor and selector it came from."""
        by_pid = {m.pid: m for m in self.monitors}
        for a in alerts:
            m = by_pid.get(a.project)
            if m is None:
                continue
            a.evidence.update(_described(m))
            a.summary = f"monitor {m.config.name}: {a.summary}"
        for p in projects:
            m = by_pid.get(str(p.get("project")))
            if m is not None:
                p.update(_described(m))


def _described(m: Monitor) -> dict[str, Any]:
    out: dict[str, Any] = {"monitor": m.config.name, "selector": m.selector}
    if m.template is not None:
        out["template"] = m.template
    return out


def is_monitor(pid: str) -> bool:
    return pid.startswith(PREFIX)


def tag_keys(cfg: Config) -> list[str]:
    """Every cost tag key the monitors read, for loaders that keep only the tags asked for (DuckDB)."""
    keys: list[str] = []
    for mc in cfg.monitors:
        sel, dim = mc.selector, mc.for_each or ""
        keys += list(sel.tags)
        keys += [f.format(k) for k in sel.labels for f in LABEL_TAG_FORMS]
        if sel.namespace or dim == "namespace":
            keys += NAMESPACE_TAGS
        if dim.startswith("tag:"):
            keys.append(dim[4:])
        elif dim.startswith("label:"):
            keys += [f.format(dim[6:]) for f in LABEL_TAG_FORMS]
    return list(dict.fromkeys(keys))


def select(costs: pd.DataFrame, cfg: Config) -> Selection:
    """Expand the config's monitors over ``costs`` and build their rows and virtual projects.  ``costs`` is
    the normalized cost frame as detection uses it (cut at ``as_of``, currencies filled)."""
    if not cfg.monitors:
        return Selection([], cfg, costs, n_base=len(costs))
    if costs.empty:
        return Selection([], cfg, costs, [f"{len(cfg.monitors)} monitor(s) configured, but there is no cost data"])
    base = costs.reset_index(drop=True)
    prof = _Profiles(base, *_dimensions(cfg))
    chosen: list[tuple[Monitor, np.ndarray]] = []
    notes: list[str] = []
    for mc in cfg.monitors:
        matched = prof.match(mc.selector)
        if mc.for_each:
            got, note = _expand(mc, matched, prof)
            chosen += got
            notes += note
        else:
            chosen.append((Monitor(PREFIX + mc.name, mc, _shown(mc.selector)), np.flatnonzero(matched)))
    monitors, members, more = _usable(chosen, prof)
    notes += more
    frame = _Cells(base, prof).frame(monitors, members)
    virtual = {m.pid: m.config for m in monitors}
    out_cfg = cfg.model_copy(update={"projects": {**cfg.projects, **virtual}})
    both = pd.concat([base, frame], ignore_index=True) if len(frame) else base
    return Selection(monitors, out_cfg, both, notes, len(base), prof.of_row, members, prof.n,
                     prof.attr["project_id"], [*prof.uniques["project_id"].tolist(), None])


def _dimensions(cfg: Config) -> tuple[list[str], bool]:
    """The columns the monitors' selectors and templates read, and whether they read tags."""
    keys: set[str] = set()
    for mc in cfg.monitors:
        keys |= set(mc.selector.keys())
        if mc.for_each:
            keys.add(mc.for_each.split(":", 1)[0])
    # provider and project always: which exports a monitor's days depend on (gaps, feeds of its incidents)
    cols = [c for c in _COLUMNS if c in keys or c in ("provider", "project_id")
            or (c == "project_name" and "project" in keys)]
    return cols, bool(keys & {"namespace", "tags", "labels", "tag", "label"})


def _usable(chosen: list[tuple[Monitor, np.ndarray]], prof: _Profiles,
            ) -> tuple[list[Monitor], dict[str, np.ndarray], list[str]]:
    """Monitors with rows and a name of their own; a note for each one left out."""
    monitors: list[Monitor] = []
    members: dict[str, np.ndarray] = {}
    notes: list[str] = []
    for m, idx in chosen:
        name = m.config.name
        if m.pid in members:
            notes.append(f"monitor {name}" + (f" (from template {m.template})" if m.template else "")
                         + " has the name of an earlier monitor and was left out; give the template a more "
                         "specific name")
        elif not idx.size:
            notes.append(f"monitor {name}: no cost rows match its selector ({_show(m.selector)}); it has no "
                         "series until some do (check the values and, for tags, that the export carries them)")
        else:
            monitors.append(m)
            members[m.pid] = idx
    return monitors, members, notes


def _shown(sel: MonitorSelector) -> dict[str, Any]:
    return sel.model_dump(exclude_defaults=True)


def _show(sel: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sel.items()) or "everything"


def _clean(value: str) -> str:
    """A value from the data becomes part of a monitor's name: no control characters, bounded."""
    return _CONTROL.sub("", value).strip()[:100]


def _expand(mc: MonitorConfig, matched: np.ndarray, prof: _Profiles,
            ) -> tuple[list[tuple[Monitor, np.ndarray]], list[str]]:
    """One monitor per distinct value of ``for_each`` among the profiles the selector matches, the
    ``max_monitors`` largest by spend when there are more (and a note naming what was dropped)."""
    dim = str(mc.for_each)
    codes, values = prof.dimension(dim)
    ok = matched & (codes >= 0)
    if not ok.any():
        return [], [f"monitor template {mc.name}: no values of {dim} in the rows its selector matches "
                    f"({_show(_shown(mc.selector))})"]
    spend = np.bincount(codes[ok], weights=prof.spend[ok], minlength=len(values))
    present = np.flatnonzero(np.bincount(codes[ok], minlength=len(values)))
    # largest spend first; ties by value, so the cut is deterministic
    order = sorted(present.tolist(), key=lambda v: (-spend[v], values[v]))
    notes: list[str] = []
    if len(order) > mc.max_monitors:
        kept, dropped = order[: mc.max_monitors], order[mc.max_monitors:]
        notes.append(f"monitor template {mc.name}: {len(order)} values of {dim}, more than max_monitors "
                     f"({mc.max_monitors}); kept the {len(kept)} with the largest spend ("
                     + ", ".join(_clean(values[v]) for v in kept[:_SHOWN]) + (", ..." if len(kept) > _SHOWN else "")
                     + f"), dropped {len(dropped)} (largest dropped: "
                     + ", ".join(_clean(values[v]) for v in dropped[:_SHOWN]) + ")")
        order = kept
    out = []
    pidx = np.flatnonzero(ok)
    pidx = pidx[np.argsort(codes[pidx], kind="stable")]  # the profiles of each value, consecutive
    bounds = np.searchsorted(codes[pidx], np.arange(len(values) + 1))
    for v in sorted(order, key=lambda v: values[v]):
        value = _clean(values[v])
        if not value:
            continue
        cfg = mc.model_copy(update={"name": mc.name.replace("{value}", value),
                                    "owner": mc.owner.replace("{value}", value) if mc.owner else None})
        out.append((Monitor(PREFIX + cfg.name, cfg, _selector_for(mc, dim, values[v]), template=mc.name),
                    pidx[bounds[v]: bounds[v + 1]]))
    return out, notes


def _selector_for(mc: MonitorConfig, dim: str, value: str) -> dict[str, Any]:
    """The expanded monitor's selector: the template's, with the ``for_each`` dimension set to the value."""
    sel = _shown(mc.selector)
    if dim.startswith(("tag:", "label:")):
        group = "tags" if dim.startswith("tag:") else "labels"
        sel[group] = {**sel.get(group, {}), dim.split(":", 1)[1]: [value]}
    else:
        sel[dim] = [value]
    return sel


class _Profiles:
    """Base rows reduced to distinct (provider, project, name, service, category, region, tag set)."""

    def __init__(self, costs: pd.DataFrame, used: list[str], with_tags: bool) -> None:
        """Only the columns some monitor reads (``used``), and the tags if one reads them, are looked at."""
        n = len(costs)
        self.codes: dict[str, np.ndarray] = {}
        self.uniques: dict[str, np.ndarray] = {}
        for col in used:
            c, u = pd.factorize(costs[col].astype("string"), use_na_sentinel=True)
            self.codes[col], self.uniques[col] = c.astype(np.int64), np.asarray(u, dtype=object)
        tags = costs["tags"].to_numpy(dtype=object) if with_tags and "tags" in costs else np.full(n, None, object)
        # rows share tag dicts (loaders decode each distinct text once): one entry per distinct object
        tcodes = pd.factorize(np.fromiter(map(id, tags), dtype=np.int64, count=n))[0].astype(np.int64) \
            if with_tags else np.zeros(n, dtype=np.int64)
        first = _first_index(tcodes, int(tcodes.max()) + 1 if n else 0)
        self.tag_sets = [t if isinstance(t, dict) else {} for t in tags[first]]
        key = tcodes
        for col in used:
            key = _combine(key, self.codes[col])
        self.of_row, _ = pd.factorize(key)
        self.of_row = self.of_row.astype(np.int64)
        self.n = int(self.of_row.max()) + 1 if n else 0
        rep = _first_index(self.of_row, self.n)
        self.attr = {col: self.codes[col][rep] for col in used}
        self.tag_of = tcodes[rep]
        usage = costs["effective_cost"].to_numpy(dtype=float)
        self.spend = np.bincount(self.of_row, weights=np.nan_to_num(np.clip(usage, 0, None)), minlength=self.n)
        self._tag_cache: dict[str, tuple[np.ndarray, list[str]]] = {}

    def match(self, sel: MonitorSelector) -> np.ndarray:
        """Bool per profile: every key given matches (a list: any of its values)."""
        ok = np.ones(self.n, dtype=bool)
        for col in ("provider", "service", "service_category", "region"):
            wanted = getattr(sel, col)
            if wanted:
                ok &= self._in(col, wanted, lower=col == "provider")
        if sel.project:
            ok &= self._in("project_id", sel.project) | self._in("project_name", sel.project)
        for dim, wanted in ([("namespace", sel.namespace)] if sel.namespace else []) + \
                [(f"tag:{k}", v) for k, v in sel.tags.items()] + [(f"label:{k}", v) for k, v in sel.labels.items()]:
            codes, values = self.dimension(dim)
            ok &= _lookup(np.isin(np.asarray(values, dtype=object), list(wanted)), codes)
        return ok

    def _in(self, col: str, wanted: list[str], lower: bool = False) -> np.ndarray:
        u = self.uniques[col]
        if lower:
            hit = np.isin(np.char.lower(u.astype(str)), [w.lower() for w in wanted]) if u.size else np.zeros(0, bool)
        else:
            hit = np.isin(u, wanted)
        return _lookup(hit, self.attr[col])

    def dimension(self, dim: str) -> tuple[np.ndarray, list[str]]:
        """A ``for_each`` dimension per profile: value codes (-1: none) and the values."""
        if dim == "project":
            dim = "project_id"
        if dim in _COLUMNS:
            return self.attr[dim], [str(v) for v in self.uniques[dim]]
        if dim not in self._tag_cache:
            keys = NAMESPACE_TAGS if dim == "namespace" else \
                (dim[4:],) if dim.startswith("tag:") else tuple(f.format(dim[6:]) for f in LABEL_TAG_FORMS)
            per_set = [next((str(t[k]) for k in keys if t.get(k) not in (None, "")), None) for t in self.tag_sets]
            c, u = pd.factorize(pd.array(per_set, dtype="string"), use_na_sentinel=True)
            self._tag_cache[dim] = (c.astype(np.int64), [str(v) for v in u])
        codes, values = self._tag_cache[dim]
        return (codes[self.tag_of] if codes.size else np.full(self.n, -1, dtype=np.int64)), values


def _lookup(hit: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``hit[code]`` with -1 (missing) never matching."""
    return np.append(np.asarray(hit, dtype=bool), False)[codes]


def _first_index(codes: np.ndarray, k: int) -> np.ndarray:
    """The first row of each code 0..k-1."""
    first = np.full(k, -1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes) - 1, -1, -1)
    return first


def _combine(key: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """A code for each distinct (key, code) pair, kept small so the next combination cannot overflow."""
    width = int(codes.max()) + 2 if codes.size else 1
    if key.size and int(key.max()) >= (1 << 62) // width:
        key = pd.factorize(key)[0].astype(np.int64)
    return key * width + (codes + 1)


class _Cells:
    """Base rows summed per (profile, day, currency, charge category, sign): what monitors add up."""

    def __init__(self, costs: pd.DataFrame, prof: _Profiles) -> None:
        day = costs["period_start"].array.asi8 // (86_400 * 10**9)
        cur, self.currencies = pd.factorize(costs["currency"].astype("string"), use_na_sentinel=False)
        charge, self.charges = pd.factorize(costs["charge_category"].astype("string"), use_na_sentinel=False)
        eff = np.nan_to_num(costs["effective_cost"].to_numpy(dtype=float))
        neg = (eff < 0).astype(np.int64)
        # day x currency x charge x sign, numbered by what occurs
        raw = ((day - day.min()) * len(self.currencies) + cur) * len(self.charges) + charge
        dcc, combos = pd.factorize(raw * 2 + neg)
        combos = np.asarray(combos, dtype=np.int64)
        self.neg, rest = combos % 2, combos // 2
        self.charge, rest = rest % len(self.charges), rest // len(self.charges)
        self.cur, self.day = rest % len(self.currencies), rest // len(self.currencies) + day.min()
        self.n_dcc = len(combos)
        cell, keys = pd.factorize(prof.of_row * self.n_dcc + dcc)
        keys = np.asarray(keys, dtype=np.int64)
        self.eff = np.bincount(cell, weights=eff)
        self.billed = np.bincount(cell, weights=np.nan_to_num(costs["billed_cost"].to_numpy(dtype=float)))
        self.est = np.bincount(cell, weights=costs["estimated"].to_numpy(dtype=float)) > 0
        cell_profile, self.cell_dcc = keys // self.n_dcc, keys % self.n_dcc
        # cells grouped by profile: a monitor's cells are the ranges of its profiles
        self.order = np.argsort(cell_profile, kind="stable")
        counts = np.bincount(cell_profile, minlength=prof.n)
        self.start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.count = counts
        # which providers published which days: a monitor's quiet day is a zero only where all of its
        # providers have data (one lagging export is a gap, as for a project)
        prov = prof.codes["provider"] if "provider" in prof.codes else \
            pd.factorize(costs["provider"].astype("string"))[0].astype(np.int64)
        prov = np.where(prov < 0, int(prov.max()) + 1, prov)
        self.day0 = int(day.min())
        self.published = np.zeros((int(prov.max()) + 1, int(day.max()) - self.day0 + 1), dtype=bool)
        self.published[prov, day - self.day0] = True
        self.provider_of = prov[_first_index(prof.of_row, prof.n)]

    def of(self, profiles: np.ndarray) -> np.ndarray:
        """The cells of these profiles, without a Python loop over them."""
        lens = self.count[profiles]
        starts = self.start[profiles]
        total = int(lens.sum())
        offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return np.asarray(self.order[offsets + np.arange(total)])

    def frame(self, monitors: list[Monitor], members: dict[str, np.ndarray]) -> pd.DataFrame:
        """One row per (monitor, day, currency, charge, sign) with rows, plus a zero usage row on each day its
        providers published but the monitor has no rows (after its first): a quiet day is a real zero, as for a
        project."""
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("monitor", "day", "cur", "charge", "eff", "billed", "est")}
        for k, m in enumerate(monitors):
            d = self.cell_dcc[cells := self.of(members[m.pid])]
            hit = np.flatnonzero(np.bincount(d, minlength=self.n_dcc))
            eff = np.bincount(d, weights=self.eff[cells], minlength=self.n_dcc)[hit]
            main = int(np.bincount(self.cur[hit], weights=np.abs(eff)).argmax())
            published = self.published[np.unique(self.provider_of[members[m.pid]])].all(axis=0)
            quiet = np.flatnonzero(published) + self.day0
            quiet = quiet[(quiet > self.day[hit].min()) & ~np.isin(quiet, self.day[hit])]
            zeros = np.zeros(len(quiet))
            cols["monitor"].append(np.full(len(hit) + len(quiet), k))
            cols["day"] += [self.day[hit], quiet]
            cols["cur"] += [self.cur[hit], np.full(len(quiet), main)]
            cols["charge"] += [self.charge[hit], np.full(len(quiet), -1)]  # -1: Usage
            cols["eff"] += [eff, zeros]
            cols["billed"] += [np.bincount(d, weights=self.billed[cells], minlength=self.n_dcc)[hit], zeros]
            cols["est"] += [np.bincount(d, weights=self.est[cells], minlength=self.n_dcc)[hit] > 0, zeros > 0]
        if not monitors:
            return normalize_costs(pd.DataFrame(columns=["period_start"]))
        a = {k: np.concatenate(v) for k, v in cols.items()}
        charges = np.append(np.asarray(self.charges, dtype=object), "Usage")
        out = pd.DataFrame({
            "period_start": pd.to_datetime(a["day"], unit="D", utc=True),
            "provider": PROVIDER,
            "project_id": np.asarray([m.pid for m in monitors], dtype=object)[a["monitor"]],
            "project_name": np.asarray([m.config.name for m in monitors], dtype=object)[a["monitor"]],
            "charge_category": charges[a["charge"]],
            "currency": np.asarray(self.currencies, dtype=object)[a["cur"]],
            "effective_cost": a["eff"], "billed_cost": a["billed"], "estimated": a["est"],
            "tags": pd.Series([_NO_TAGS] * len(a["day"]), dtype=object),
        })
        return normalize_costs(out)


_NO_TAGS: dict[str, str] = {}  # shared by every monitor row: tags are read, never written


__all__ = ["LABEL_TAG_FORMS", "NAMESPACE_TAGS", "PREFIX", "PROVIDER", "Monitor", "Selection", "is_monitor", "select",
           "tag_keys"]
