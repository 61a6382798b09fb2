"""The embedded local executor: every stage of a plan, in dependency order, in this process.

A failed stage marks its cell failed (with the reason, in status.json) and every other cell goes
on. A stage leased by another live process (a second `make sweep` of the same study) is skipped
for now and revisited, so two sweeps started at once cooperate instead of duplicating work.
"""
from __future__ import annotations

import time
from collections import Counter

from tqdm.auto import tqdm

from cluster.runner import run_stage
from cluster.store import Store
from vtp_core.runtime import StopFlag, stop_on_signals

BAD = ("failed", "diverged", "preempted")


def run_local(plan, store: Store, device: str | None = None, progress: bool = True,
              poll_s: float = 1.0, echo=print) -> Counter:
    """Run every stage of `plan`; returns counts of final states (done/failed/diverged/skipped/...)."""
    counts: Counter = Counter()
    pending = list(plan.stages.values())
    bad: set[str] = set()
    flag = StopFlag()
    bar = tqdm(total=len(pending), desc=f"sweep {plan.study.name}", unit="stage", disable=not progress,
               position=0, dynamic_ncols=True)
    with stop_on_signals(flag):
        while pending and not flag():
            waiting, moved = [], False
            for st in pending:
                if flag():
                    waiting.append(st)
                    continue
                if any(up in bad for up in st.upstream_ids):
                    bad.add(st.id)
                    counts["skipped"] += 1
                    bar.update(1)
                    moved = True
                    continue
                if not all(store.is_done(up) for up in st.upstream_ids):
                    waiting.append(st)  # upstream is being run by another process
                    continue
                already = store.is_done(st.id)
                t0 = time.time()
                bar.set_postfix_str(f"{st.kind} {st.id[-10:]}")
                state = run_stage(store, st, device=device, progress=progress, stop=flag)
                if state == "busy":
                    waiting.append(st)
                    continue
                moved = True
                bar.update(1)
                if state == "done":
                    counts["cached" if already else "done"] += 1
                    if not already:
                        echo(f"  done     {st.id}  ({time.time() - t0:.1f}s)")
                else:
                    bad.add(st.id)
                    counts[state] += 1
                    echo(f"  {state:<8} {st.id}: {store.status(st.id).get('reason')}")
            pending = waiting
            if pending and not moved:
                time.sleep(poll_s)
    bar.close()
    if flag():
        counts["interrupted"] = len(pending)
    return counts
