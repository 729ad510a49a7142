"""Monthly budgets: stepped alerts on actual and forecast month-end spend, and the forecast's 80 % interval.

A project (or monitor) with ``monthly_budget`` is told when its spend crosses each step of ``budget_alerts``
(percent of the budget; default ``detection.budget_alerts``, ``[100]``), on two bases:

* **actual**: month-to-date net spend (all charges, credits included) reaches the step;
* **forecast**: the *lower* bound of the 80 % interval of month-end spend reaches the step, so a forecast
  alert means "even the optimistic end of the forecast is over".

Invariants:

* Each (month, step, basis) is one alert identity, scope ``budget:2026-12:75:forecast``.  Every run replays
  the whole month from its first day, so the first crossing day (and so the alert, its numbers and its
  ``detected_at``) is the same in every run; the alert holds to the month's end whatever the forecast does
  later.  ``costwatch.incidents`` keeps a budget incident per project and month, tells each identity once,
  never repeats it and closes it silently when the month is over.
* An actual crossing supersedes the forecast crossing of the same step: when both first happen on the same
  day only the actual one is raised; a forecast told earlier stays, and the actual is told once more.
* No leakage: the forecast for day *d* uses data through *d* only.  ETS parameters are fitted on the history
  before the first scored month; the states are then filtered day by day through the scored days.
* Robustness: the fit's history has one-off outliers (more than ``DESPIKE_Z`` robust deviations from the same
  weekday a week or two either side) clipped, so a past incident neither widens the interval nor makes the
  level jumpy.  The scored month itself is filtered on raw spend: money spent now is real, and a spike that
  goes on must raise the forecast (with the fitted smoothing weight, not a full week's run-rate share).

The forecast is month-to-date plus the sum of the remaining days' forecasts.  With statsmodels (a core
dependency; the small Lambda build lacks it) the daily model is ETS(A,N,A): additive errors, no trend, a
weekly season; the variance of the *sum* of the remaining days is exact for that model (the h-step errors
share innovations, so their variances cannot simply be added).  Without it, or with less than
``MIN_FIT_DAYS`` of history, or when the fit fails, the fallback is today's 7-day run rate with an
empirical interval: the quantiles of the run rate's own past errors over the same number of days.
``bench/forecast.py`` measures both on the labelled scenarios.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

from .alerts import Alert
from .config import Config, DetectionConfig, ProjectConfig

DAY = pd.Timedelta(days=1)
LEVEL = 0.8                      # the interval's coverage
Z = NormalDist().inv_cdf(0.5 + LEVEL / 2)
INTERVAL_SCALE = 2.0             # sd multiplier for the ETS interval: 80 % coverage on bench seeds 1-3
PERIOD = 7                       # weekday effects
MIN_FIT_DAYS = 21                # three weeks before the scored month (statsmodels' heuristic start needs 16)
FIT_DAYS = 91                    # the newest quarter is enough for a daily cost model, and keeps the fit cheap
DESPIKE_Z = 4.0
CLIP_Z = 3.0                     # a scored day's error beyond this many sigma waits for the next day to confirm it
ALPHA_FLOOR = 0.2                # the level follows a change in spend at least this fast (bench/forecast.py)
GAMMA_CAP = 0.05                 # ... and a weekday's pattern changes slowly: a surge is not next week's pattern
MIN_ERROR_SAMPLES = 8            # past run-rate errors needed for an empirical interval
ETS_SPEC: dict[str, Any] = {"error": "add", "trend": None, "seasonal": "add", "seasonal_periods": PERIOD,
                            "initialization_method": "heuristic"}
ETS_BOUNDS = {"smoothing_level": (ALPHA_FLOOR, 0.9999), "smoothing_seasonal": (0.0, GAMMA_CAP)}
BUDGET_KIND = "budget_forecast_exceeded"


@dataclass(frozen=True)
class Forecast:
    """Month-end spend as seen at the end of one day."""

    month_to_date: float
    forecast: float
    low: float
    high: float
    days_left: int
    run_rate: float
    method: str                  # "ets" or "run_rate"
    note: str = ""               # why the run rate was used, or why it has no interval

    def text(self) -> str:
        return f"forecast {self.forecast:,.0f} ({LEVEL * 100:.0f} %: {self.low:,.0f}–{self.high:,.0f})"

    def evidence(self) -> dict[str, Any]:
        ev = {"month_to_date": self.month_to_date, "forecast": self.forecast, "forecast_low": self.low,
              "forecast_high": self.high, "interval": LEVEL, "method": self.method, "days_left": self.days_left,
              "run_rate": self.run_rate}
        return ev | ({"method_note": self.note} if self.note else {})


def month_forecast(net: pd.Series, day: pd.Timestamp) -> tuple[float, float, int, float]:
    """Month-to-date spend through ``day`` and a month-end forecast from the last 7 days' run rate: the
    point forecast of the fallback, and the yardstick ``bench/forecast.py`` compares ETS with.
    Returns (mtd, forecast, days_left, run_rate)."""
    month_start = day.replace(day=1)
    month_end = month_start + pd.offsets.MonthBegin(1)
    mtd = float(net[(net.index >= month_start) & (net.index <= day)].sum())
    last7 = net[(net.index > day - pd.Timedelta(days=7)) & (net.index <= day)]
    rate = float(last7.mean()) if len(last7) else 0.0
    days_left = int((month_end - (day + DAY)) / DAY)
    return mtd, mtd + rate * days_left, days_left, rate


def row_text(row: dict[str, Any], digits: int = 0) -> str:
    """A report row's forecast with its interval, ``2,574 (2,410–2,730)``; "" without a forecast."""
    if row.get("forecast") is None:
        return ""
    text = f"{row['forecast']:,.{digits}f}"
    if row.get("forecast_low") is not None and row.get("forecast_high") is not None:
        text += f" ({row['forecast_low']:,.{digits}f}–{row['forecast_high']:,.{digits}f})"
    return text


def steps_of(pc: ProjectConfig, det: DetectionConfig) -> list[float]:
    """The budget steps (percent) a project is told at: its own, else the detection default."""
    return list(pc.budget_alerts) if pc.budget_alerts is not None else list(det.budget_alerts)


# ------------------------------------------------------------------------------------------ forecasts

def forecasts(net: pd.Series, days: Sequence[pd.Timestamp], *, method: str = "auto") -> dict[pd.Timestamp, Forecast]:
    """The month-end forecast as seen at the end of each of ``days`` (days of ``net``, a daily net spend
    series indexed by UTC midnight).  ``method``: "auto" (ETS where it can, else the run rate), "ets"
    (the same) or "run_rate" (the fallback only, cheap: for series without a budget)."""
    if not len(days):
        return {}
    scored = pd.DatetimeIndex(sorted(set(days)))
    dense = net if net.index.is_unique and net.index.is_monotonic_increasing else net.groupby(level=0).sum()
    dense = dense.reindex(pd.date_range(dense.index.min(), scored.max(), freq="D"))
    x = dense.to_numpy(dtype=float)
    filled = np.nan_to_num(x)
    mtd = pd.Series(filled).groupby(np.asarray(dense.index.year * 12 + dense.index.month)).cumsum().to_numpy()
    rate = dense.rolling(PERIOD, min_periods=1).mean().fillna(0.0).to_numpy()
    pos = dense.index.get_indexer(scored)
    left = np.asarray(scored.days_in_month - scored.day)
    ets: dict[int, tuple[float, float]] = {}
    note = ""
    if method != "run_rate":
        ets, note = _ets_sums(dense, pos, left, scored[0].replace(day=1))
    cs = np.r_[0.0, np.cumsum(filled)]
    out = {}
    for day, i, h in zip(scored, pos, left, strict=True):
        base = float(mtd[i])
        if i in ets:
            mean, sd = ets[i]
            out[day] = Forecast(base, base + mean, base + mean - Z * sd, base + mean + Z * sd, int(h),
                                float(rate[i]), "ets")
            continue
        point = float(rate[i]) * int(h)
        lo_q, hi_q, why = _run_rate_errors(cs, rate, int(i), int(h))
        low, high = sorted((base + point * (1 + lo_q), base + point * (1 + hi_q)))  # credits: a negative rate
        out[day] = Forecast(base, base + point, low, high, int(h), float(rate[i]), "run_rate",
                            "; ".join(w for w in (note, why) if w))
    return out


def _run_rate_errors(cs: np.ndarray, rate: np.ndarray, i: int, h: int) -> tuple[float, float, str]:
    """The 10 % and 90 % quantiles of the run rate's relative error over ``h`` days, from every earlier day
    whose ``h`` following days are known by day ``i``; (0, 0) with a note when there are too few."""
    if h == 0:
        return 0.0, 0.0, ""
    t = np.arange(PERIOD - 1, i - h + 1)
    expect = rate[t] * h
    ok = expect > 0
    if ok.sum() < MIN_ERROR_SAMPLES:
        return 0.0, 0.0, f"no interval: fewer than {MIN_ERROR_SAMPLES} past {h}-day run-rate errors"
    rel = (cs[t + 1 + h] - cs[t + 1])[ok] / expect[ok] - 1.0
    lo, hi = np.quantile(rel, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi), ""


def _ets_sums(dense: pd.Series, pos: np.ndarray, left: np.ndarray, fit_end: pd.Timestamp,
              ) -> tuple[dict[int, tuple[float, float]], str]:
    """Per scored position: mean and sd (scaled) of the sum of the remaining days' spend under ETS(A,N,A),
    or ({}, why not)."""
    try:
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel
    except ImportError:
        return {}, "run rate: statsmodels is not installed"
    first = max(0, int(dense.index.searchsorted(fit_end)) - FIT_DAYS)
    n_hist = int(dense.index.searchsorted(fit_end)) - first
    if n_hist < MIN_FIT_DAYS:
        return {}, f"run rate: {n_hist} days of history before {fit_end:%Y-%m} (ETS needs {MIN_FIT_DAYS})"
    y = dense.iloc[first:].interpolate(limit_direction="both").to_numpy(dtype=float)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter, overflow on absurd amounts: checked below
            fit = ETSModel(despike(y[:n_hist]), bounds=dict(ETS_BOUNDS),  # a copy: statsmodels writes into it
                           **ETS_SPEC).fit(disp=False)
            alpha, gamma = float(fit.params[0]), float(fit.params[1])
            sigma2 = float(np.mean(np.asarray(fit.resid, dtype=float) ** 2))
            states = robust_filter(np.asarray(fit.states, dtype=float), y[n_hist:], alpha, gamma,
                                   math.sqrt(sigma2))
    except (ValueError, np.linalg.LinAlgError, FloatingPointError) as e:
        return {}, f"run rate: the ETS fit failed ({type(e).__name__})"
    if not (np.isfinite(states).all() and math.isfinite(sigma2)):
        return {}, "run rate: the ETS fit did not converge"
    out = {}
    for i, h in zip(pos - first, left, strict=True):
        out[int(i) + first] = _sum_moments(states, int(i), int(h), alpha, gamma, sigma2)
    return out, ""


def robust_filter(fitted: np.ndarray, y: np.ndarray, alpha: float, gamma: float, sigma: float) -> np.ndarray:
    """The (level, season) states of ETS(A,N,A) through ``y``, continuing the ``fitted`` states, with the
    one-step error of a day beyond ``CLIP_Z`` sigma held back until the next day confirms it (an error the
    same way): a one-day spike then moves the forecast by at most ``alpha * CLIP_Z * sigma``, while a change
    that stays is taken in full, a day late.  With nothing beyond, statsmodels' own filter (``smooth``)."""
    states = np.vstack([fitted, np.zeros((len(y), 2))])
    n, lim = len(fitted), CLIP_Z * sigma
    held, pending, confirmed = 0.0, 0.0, 0.0
    for t, obs in enumerate(y, start=n):
        level, season = states[t - 1, 0], states[t - PERIOD, 1]
        e = obs - level - season
        side = math.copysign(1.0, e)
        if abs(e) <= lim:
            used, held, pending, confirmed = e, 0.0, 0.0, 0.0
        elif side == confirmed:
            used = e
        elif side == pending:
            used, held, pending, confirmed = e + held, 0.0, 0.0, side
        else:
            used, pending, confirmed = side * lim, side, 0.0
            held = e - used
        states[t] = level + alpha * used, season + gamma * used
    return states


def _sum_moments(states: np.ndarray, i: int, h: int, alpha: float, gamma: float, sigma2: float,
                 ) -> tuple[float, float]:
    """Mean and scaled sd of y[i+1] + ... + y[i+h] given the states after day ``i`` (rows: level, season).

    The error of day i+k is e[i+k] plus, for each earlier innovation e[i+j], alpha (it moved the level)
    and gamma when j is a whole number of weeks before (it moved that weekday's season); summed over the
    remaining days, innovation e[i+k] weighs 1 + C(h-k), C(n) = n alpha + floor(n / 7) gamma."""
    if h <= 0:
        return 0.0, 0.0
    k = np.arange(1, h + 1)
    season = states[i + k - PERIOD * np.ceil(k / PERIOD).astype(int), 1]
    mean = h * states[i, 0] + float(season.sum())
    n = h - k
    var = sigma2 * float(np.sum((1 + n * alpha + (n // PERIOD) * gamma) ** 2))
    return float(mean), INTERVAL_SCALE * math.sqrt(var)


def despike(y: np.ndarray, z: float = DESPIKE_Z) -> np.ndarray:
    """``y`` with values more than ``z`` robust deviations from their reference (the median of the same
    weekday one and two weeks either side) clipped to that reach, so one-off incidents in the history do
    not become the model's noise.  A level that stays is its own neighbours' reference and is kept."""
    n = len(y)
    if n < 2 * PERIOD:
        return y
    shifted = np.full((4, n), np.nan)
    for row, lag in enumerate((-2 * PERIOD, -PERIOD, PERIOD, 2 * PERIOD)):
        src = slice(max(0, -lag), n - max(0, lag))
        dst = slice(max(0, lag), n - max(0, -lag))
        shifted[row, dst] = y[src]
    ref = _column_medians(shifted)
    resid = y - ref
    spread = 1.4826 * float(np.nanmedian(np.abs(resid))) if np.isfinite(resid).any() else 0.0
    reach = z * max(spread, 0.02 * float(np.median(np.abs(y))), 1e-9)
    return np.where(np.isfinite(ref), np.clip(y, ref - reach, ref + reach), y)


def _column_medians(x: np.ndarray) -> np.ndarray:
    """``np.nanmedian(x, axis=0)`` for a few rows, without its per-call overhead (it dominated the fit)."""
    ranked = np.sort(x, axis=0)  # NaN sorts last
    count = (~np.isnan(x)).sum(axis=0)
    lo = np.take_along_axis(ranked, np.maximum((count - 1) // 2, 0)[None, :], axis=0)[0]
    hi = np.take_along_axis(ranked, (count // 2)[None, :], axis=0)[0]  # the same row when the count is odd
    return np.where(count > 0, (lo + hi) / 2, np.nan)


# ---------------------------------------------------------------------------------------------- alerts

def budget_alerts(costs: pd.DataFrame, cfg: Config, meta: pd.DataFrame, since: pd.Timestamp,
                  as_of: pd.Timestamp, delay: pd.Timedelta,
                  ) -> tuple[list[Alert], dict[tuple[str, str], Forecast]]:
    """Budget step alerts (see the module docstring) from each budgeted project's net spend in the
    budget's currency, and its latest forecast by (project, currency) for the report's rows.

    Every month that ends after ``since`` is scored from its first day, so a step crossed before the
    window is still the same alert, and none is raised again."""
    out: list[Alert] = []
    latest: dict[tuple[str, str], Forecast] = {}
    budgets = {pid: pc for pid, pc in cfg.projects.items() if pc.monthly_budget is not None}
    if costs.empty or not budgets:
        return out, latest
    pids = costs["project_id"].astype(str)
    sub, sub_pids = costs[pids.isin(list(budgets))], pids[pids.isin(list(budgets))]
    sub = sub[sub["currency"].astype(str).to_numpy() == sub_pids.map(meta["limit_currency"]).astype(str).to_numpy()]
    daily = sub.groupby([sub["project_id"].astype(str), sub["period_start"].dt.floor("D")])["effective_cost"].sum()
    for pid in daily.index.get_level_values(0).unique():
        pc, net = budgets[str(pid)], daily.loc[pid]
        month_end = net.index - pd.to_timedelta(net.index.day - 1, unit="D") + pd.offsets.MonthBegin(1)
        days = net.index[(net.index + DAY + delay <= as_of) & (month_end + delay >= since)]
        if not len(days):
            continue
        fc = forecasts(net, days)
        row = meta.loc[str(pid)]
        latest[(str(pid), str(row["limit_currency"]))] = fc[days.max()]
        for month, group in pd.Series(days, index=days).groupby(days.strftime("%Y-%m")):
            out += _month_alerts(str(pid), row, str(month), [fc[d] for d in group], list(group), pc,
                                 steps_of(pc, cfg.detection), delay)
    return out, latest


def _month_alerts(pid: str, row: pd.Series, month: str, fcs: list[Forecast], days: list[pd.Timestamp],
                  pc: ProjectConfig, steps: list[float], delay: pd.Timedelta) -> list[Alert]:
    """One alert per step and basis first crossed in the month; actual wins a tie with forecast."""
    budget = float(pc.monthly_budget or 0.0)
    out = []
    for pct in steps:
        amount = budget * pct / 100.0
        actual = next((k for k, f in enumerate(fcs) if f.month_to_date >= amount), None)
        ahead = next((k for k, f in enumerate(fcs) if f.low >= amount), None)
        if actual is not None:
            out.append(_alert(pid, row, month, pct, "actual", days[actual], fcs[actual], budget, delay))
        if ahead is not None and (actual is None or ahead < actual):
            out.append(_alert(pid, row, month, pct, "forecast", days[ahead], fcs[ahead], budget, delay))
    return out


def _alert(pid: str, row: pd.Series, month: str, pct: float, basis: str, day: pd.Timestamp, f: Forecast,
           budget: float, delay: pd.Timedelta) -> Alert:
    amount = budget * pct / 100.0
    cur = str(row["limit_currency"])
    observed = f.month_to_date if basis == "actual" else f.forecast
    if basis == "actual":
        what = f"{month} spend to date {f.month_to_date:,.2f} {cur} passed"
    else:
        what = f"{month} month-end forecast passes"
    return Alert(
        kind=BUDGET_KIND, project=pid, project_name=str(row["project_name"]), provider=str(row["provider"]),
        start=day.replace(day=1), detected_at=day + DAY + delay,
        severity="high" if basis == "actual" and pct >= 100 else "warning",
        observed=observed, expected=amount, lower=f.low, upper=f.high, currency=cur, score=observed / amount,
        scope=f"budget:{month}:{pct:g}:{basis}",
        evidence={"metric": "month_forecast", "month": month, "basis": basis, "step_pct": pct,
                  "step_amount": amount, "budget": budget, "already_over": f.month_to_date > budget,
                  **f.evidence()},
        summary=(f"{what} {pct:g} % of the budget {budget:,.2f} {cur} ({amount:,.2f}): {f.text()}, "
                 f"month to date {f.month_to_date:,.2f}"),
    )


def ongoing(alert: Alert, since: pd.Timestamp, delay: pd.Timedelta) -> bool:
    """A budget step crossed before the window holds until its month is over."""
    return alert.kind == BUDGET_KIND and pd.Timestamp(alert.start) + pd.offsets.MonthBegin(1) + delay >= since


__all__ = ["BUDGET_KIND", "LEVEL", "Forecast", "budget_alerts", "despike", "forecasts", "month_forecast", "ongoing",
           "row_text", "steps_of"]
