"""Run the fault-injection scenarios of ``tests/test_faults.py`` outside pytest and print what happened.

Each scenario runs the whole ``costwatch run`` pipeline against local fakes (moto behind a fault proxy,
fake BigQuery/Monitoring, fake ARM, fake Kubernetes, fake Slack, an SMTP server) with one fault injected,
and checks that the other providers still report, no alert is lost, none is sent twice, and the exit code
and summary say what happened.  The table has one row per fault.

    .venv/bin/python bench/faults.py                 # every scenario
    .venv/bin/python bench/faults.py -k slack        # the ones whose name contains "slack"
    .venv/bin/python bench/faults.py --out faults.md

Exit status: 0 when every scenario held, 1 otherwise (the failing rows say why).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc loads: no transport chatter in the table

import test_faults as tf  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", dest="only", default=None, help="only scenarios whose name contains this")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (Markdown) here")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = ap.parse_args(argv)
    chosen = [(n, fn) for n, fn in tf.SCENARIOS if args.only is None or args.only in n]
    if args.list or not chosen:
        print("\n".join(n for n, _ in tf.SCENARIOS))
        return 0 if chosen or args.list else 1
    logging.basicConfig(level=logging.CRITICAL)  # the faults are meant to fail: keep their warnings quiet
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    rows: list[tf.Row] = []
    failed = 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="costwatch-faults-") as tmp, tf.World(Path(tmp) / "world") as world:
        for i, (name, fn) in enumerate(chosen):
            d = Path(tmp) / f"{i:02d}-{name}"
            d.mkdir()
            started = time.monotonic()
            print(f"[{i + 1}/{len(chosen)}] {name} ...", end="", flush=True, file=sys.stderr)
            try:
                row = fn(world, d)
            except tf.pytest.skip.Exception as e:  # not possible on this machine (see the message)
                row = tf.Row(name=name, layer="?", fault="(skipped)", outcome=f"skipped: {e}", exit="-",
                             reported="-", delivered=0, pending=0, duplicates=0, lost=0, seconds=0.0)
            except Exception as e:  # a scenario whose promise did not hold: a row that says so
                failed += 1
                where = traceback.extract_tb(e.__traceback__)[-1]
                row = tf.Row(name=name, layer="?", fault="(see the scenario)", outcome=f"FAILED at line "
                             f"{where.lineno}: {type(e).__name__}: {str(e)[:200]}", exit="?", reported="?",
                             delivered=0, pending=0, duplicates=0, lost=0,
                             seconds=round(time.monotonic() - started, 1))
            rows.append(row)
            print(f" {row.seconds:g}s", file=sys.stderr)
    text = tf.table(rows)
    print(text)
    print(f"\n{len(rows) - failed}/{len(rows)} scenarios held; {time.monotonic() - t0:.0f} s in all")
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
