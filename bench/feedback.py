"""Owners' answers benchmark (issue 19): do "not an anomaly" and "expected" cut repeated false alerts,
without hiding a miner?

    python bench/feedback.py --seeds 3 --projects 40 --days 100 --follow 45

Replays the labelled scenarios of ``costwatch.scenarios`` (with the issue-16 failure classes: month-end
jobs, autoscaling, saturating surges, legit GPU jobs, …) one day at a time: ``detect`` as of the end of each
day, the alerts it reports that day (new ones, and earlier ones whose episode still goes on).  A simulated
owner answers once per series, the first time it alerts:

- an alert on a project with no labelled incident, or a mining alert where nothing was mined: "not an
  anomaly";
- a cost alert on a labelled planned step: "expected" (the first alert was right; the new level is planned).

Alerts on real incidents (miners, surges, budget overruns) are never answered.  Counted over the replay:
alert-days on an answered series after the day of its answer, without and with
:func:`costwatch.feedback.apply`, and
mining incidents found without and with it (the answers must not hide one).  Figures are printed, never
asserted; nothing here chooses a parameter (MARGIN and ACCEPTED_GROWTH were set before this ran).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costwatch import feedback
from costwatch.alerts import Alert
from costwatch.demo import demo_config
from costwatch.detect import detect
from costwatch.scenarios import generate

DAY = pd.Timedelta(days=1)


def _matches(alert: Alert, inc: pd.Series) -> bool:
    return (str(alert.project) == str(inc["project_id"])
            and inc["start"] - pd.Timedelta(hours=1) <= alert.detected_at <= inc["end"] + 2 * DAY)


def _verdict(alert: Alert, incidents: pd.DataFrame) -> str:
    """"true" (leave it), "not_anomaly" or "expected" (what the simulated owner answers)."""
    hits = [i for _, i in incidents.iterrows() if _matches(alert, i)]
    if alert.kind == "mining_suspected":
        return "true" if any(bool(i["is_mining"]) for i in hits) else "not_anomaly"
    if not hits:
        return "not_anomaly"
    return "expected" if any(i["kind"] == "planned_step" for i in hits) else "true"


def replay(seed: int, projects: int, days: int, follow: int) -> dict[str, float]:
    sc = generate(seed=seed, n_projects=projects, days=days, failure_classes=True)
    cfg = demo_config(sc)
    inc = sc.incidents
    answers: list[feedback.Feedback] = []
    answered_at: dict[str, pd.Timestamp] = {}
    repeats_without = repeats_with = answered = 0
    found_without: set[int] = set()
    found_with: set[int] = set()
    mining = inc[inc["is_mining"]]
    for k in range(follow, 0, -1):
        as_of = (sc.end - (k - 1) * DAY).floor("D")
        det = detect(sc.costs[sc.costs["period_start"] < as_of], sc.usage[sc.usage["timestamp"] < as_of], cfg,
                     as_of=as_of, since=DAY)
        kept, _ = feedback.apply(det.alerts, answers)
        kept_ids = {id(a) for a in kept}
        for a in det.alerts:  # an alert still reported a later day is told again (repeat, update, digest)
            if a.fingerprint in answered_at and as_of > answered_at[a.fingerprint]:
                repeats_without += 1
                repeats_with += id(a) in kept_ids
            for j, (_, i) in enumerate(mining.iterrows()):
                if a.kind == "mining_suspected" and _matches(a, i):
                    found_without.add(j)
                    if id(a) in kept_ids:
                        found_with.add(j)
        for a in kept:  # the owner answers what reached them, once per series
            verdict = _verdict(a, inc)
            if verdict != "true" and a.fingerprint not in answered_at:
                answers.append(feedback.from_alert(a.to_dict(), verdict, "bench", as_of))
                answered_at[a.fingerprint] = as_of
                answered += 1
    return {"answers": answered, "repeats_without": repeats_without, "repeats_with": repeats_with,
            "miners_without": len(found_without), "miners_with": len(found_with), "miners": len(mining)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--projects", type=int, default=40)
    ap.add_argument("--days", type=int, default=100)
    ap.add_argument("--follow", type=int, default=45, help="days replayed, one detect per day")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for s in range(args.first_seed, args.first_seed + args.seeds):
        r = replay(s, args.projects, args.days, args.follow)
        rows.append(r)
        print(f"seed {s}: {r['answers']:.0f} answers; alerts on answered series after the answer "
              f"{r['repeats_without']:.0f} -> {r['repeats_with']:.0f}; mining incidents found "
              f"{r['miners_without']:.0f} -> {r['miners_with']:.0f} of {r['miners']:.0f}")
    tot = {k: sum(r[k] for r in rows) for k in rows[0]}
    cut = 1 - tot["repeats_with"] / tot["repeats_without"] if tot["repeats_without"] else float("nan")
    print(f"\nall seeds: {tot['answers']:.0f} answers; repeated alerts {tot['repeats_without']:.0f} -> "
          f"{tot['repeats_with']:.0f} (cut {cut:.0%}); miners missed because of an answer: "
          f"{tot['miners_without'] - tot['miners_with']:.0f} of {tot['miners_without']:.0f} found")
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
