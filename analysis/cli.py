"""Command line: ``python -m analysis report|quote|compare``.

    python -m analysis report  --table results/<study>/runs.parquet --out results/<study> [--commit SHA]
    python -m analysis quote   --summary results/demo/summary.md --into README.md
    python -m analysis compare --table results/<study>/runs.parquet ae vtp [--target 30]

Bad input (missing file, unreadable table, unknown recipe, no usable law) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from analysis.compare import CompareError, compare_recipes
from analysis.fit import FitRefused
from analysis.table import TableError, load_table


def _git_commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown (no commit)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha.stdout.strip() + (" (dirty)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis", description="Scaling-law fits, plots and reports.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report", help="write report.html (+ figures) for a study")
    r.add_argument("--table", required=True, help="results/<study>/runs.parquet (or .csv)")
    r.add_argument("--out", required=True, help="output folder (usually results/<study>)")
    r.add_argument("--study", help="study name (default: the table's only study)")
    r.add_argument("--n-boot", type=int, default=1000)
    r.add_argument("--commit", help="commit recorded in summary.md (default: `git rev-parse --short HEAD` "
                                    "of the current directory, -dirty with tracked changes)")
    q = sub.add_parser("quote", help="quote a study's summary.md into a document's summary block (the README)")
    q.add_argument("--summary", required=True, help="results/<study>/summary.md")
    q.add_argument("--into", default="README.md")
    c = sub.add_parser("compare", help="compute multiplier between two recipes")
    c.add_argument("--table", required=True)
    c.add_argument("a", help="reference recipe (its best value is the target)")
    c.add_argument("b", help="recipe to compare")
    c.add_argument("--target", type=float, help="target value instead of A's best")
    c.add_argument("--x", default="tokenizer_flops")
    c.add_argument("--y", default="gfid")
    c.add_argument("--n-boot", type=int, default=1000)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "quote":
        from analysis.summary import parse_summary, quote_into

        try:
            text = Path(args.summary).read_text()
            parse_summary(text)
            quote_into(args.into, text)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{args.into}: quotes {args.summary}")
        return 0
    try:
        df = load_table(args.table)
        if args.cmd == "report":
            from analysis.report import write_report

            studies = sorted(map(str, df["study"].dropna().unique()))
            study = args.study or (studies[0] if len(studies) == 1 else None)
            if study is None or study not in studies:
                raise TableError(f"{args.table}: study {args.study!r} not in table; choose --study from: "
                                 f"{', '.join(studies) or 'none'}")
            path = write_report(df, study, args.out, {"table": str(Path(args.table).resolve()),
                                                      "git commit": _git_commit()}, n_boot=args.n_boot,
                                commit=args.commit)
            print(path)
        else:
            for col in (args.x, args.y):
                if col not in df.columns:
                    raise TableError(f"{args.table}: no column {col!r}")
            cmp = compare_recipes(df, args.a, args.b, x=args.x, y=args.y, target=args.target, n_boot=args.n_boot)
            print(cmp.sentence())
    except (TableError, CompareError, FitRefused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
