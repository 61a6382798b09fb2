"""Fault injection: SIGKILL the local sweep driver at random moments, re-run, compare tables.

Why: the run store's promises (atomic writes, `done` last, flock leases that die with their
holder, exact resume from ckpt/last.pt) only matter if a sweep killed at *any* instant finishes
with the same numbers as one that never was. This drives `python -m cluster sweep` in a
subprocess, kills it with SIGKILL after a random delay, repeats, lets the last run finish, and
compares the results table (metrics columns) with an uninterrupted run in a separate folder.

    python -m cluster.faults sweeps/demo.yaml --kills 10 --seed 0
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

COMPARE = ("cell", "status", "tokenizer_steps", "tokenizer_flops", "dit_flops", "rfid", "linear_probe",
           "linear_probe_pre", "zero_shot", "gfid", "gfid_protocol", "pretrain_id", "fid_id")


def _sweep(study: str, results: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "cluster", "--results", str(results), "sweep", study,
                             "--no-progress", "--no-mlflow"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)


def run_to_end(study: str, results: Path, timeout: float = 3600) -> float:
    t0 = time.time()
    p = _sweep(study, results)
    if p.wait(timeout) != 0:
        raise RuntimeError(f"sweep {study} into {results} exited {p.returncode}")
    return time.time() - t0


def inject(study: str, results: Path, kills: int, max_delay: float, seed: int, min_delay: float = 0.2) -> list[float]:
    """Kill the driver `kills` times at random delays in [min_delay, max_delay] s; returns the delays used."""
    rng = random.Random(seed)
    delays = []
    for _ in range(kills):
        delay = rng.uniform(min_delay, max_delay)
        p = _sweep(study, results)
        time.sleep(delay)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        delays.append(round(delay, 2))
    return delays


def compare(a: Path, b: Path, study_name: str) -> pd.DataFrame:
    ta = pd.read_parquet(a / study_name / "runs.parquet")[list(COMPARE)].sort_values("cell").reset_index(drop=True)
    tb = pd.read_parquet(b / study_name / "runs.parquet")[list(COMPARE)].sort_values("cell").reset_index(drop=True)
    diff = ta.compare(tb)
    return diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study")
    ap.add_argument("--workdir", default="results/faults")
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--max-delay", type=float, default=None, help="default: the uninterrupted run time")
    ap.add_argument("--min-delay", type=float, default=None,
                    help="default: the driver's start-up time (a re-run of the finished study) + 0.5 s")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from sweeps.schema import load_study, study_path

    name = load_study(study_path(args.study)).name
    work = Path(args.workdir)
    ref, hurt = work / "uninterrupted", work / "killed"
    t_ref = run_to_end(args.study, ref)
    t_start = run_to_end(args.study, ref)  # start-up only (imports, planning): the study is finished
    # spread the kills over the whole run, after each restart's start-up
    min_delay = t_start + 0.5 if args.min_delay is None else args.min_delay
    delays = inject(args.study, hurt, args.kills, args.max_delay or (min_delay + 2.0 * t_ref / args.kills), args.seed,
                    min_delay=min_delay)
    run_to_end(args.study, hurt)
    diff = compare(ref, hurt, name)
    print(f"uninterrupted run {t_ref:.1f}s; killed {len(delays)} times at {delays}")
    if len(diff):
        print("tables differ:\n" + diff.to_string())
        return 1
    print("final tables identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
