"""Fault injection: SIGKILL the local sweep driver at 10 random moments; every re-run picks up where
the last left off and the final results table equals an uninterrupted run's (real stages, micro study)."""
import dataclasses
import json

import pytest

from cluster import faults
from sweeps import costs
from sweeps.schema import load_study

pytestmark = pytest.mark.slow


def test_sigkill_at_random_moments_gives_the_same_table(tmp_path, micro_study):
    probe = tmp_path / "probe.yaml"
    probe.write_text(micro_study.format(budget="1.0e15"))
    s = load_study(probe)
    per_step = max(costs.tokenizer_step_flops(dataclasses.replace(s.tokenizer, recipe=r)) for r in s.grid.recipe)
    study = tmp_path / "micro.yaml"
    # more steps than the e2e test so kills land inside training, not only between stages
    study.write_text(micro_study.format(budget=f"{12.5 * per_step:.6e}").replace("steps: 20,", "steps: 60,"))
    ref, hurt = tmp_path / "ref", tmp_path / "hurt"
    t_ref = faults.run_to_end(str(study), ref)
    # the driver's start-up (imports, planning) measured now, under this machine's current load: a
    # re-run of the finished study does nothing else. Kills land after it, inside the work.
    t_start = faults.run_to_end(str(study), ref)
    delays = faults.inject(str(study), hurt, kills=10, min_delay=t_start + 0.5, max_delay=t_start + 2.0 * t_ref / 10,
                           seed=0)
    assert len(delays) == 10
    faults.run_to_end(str(study), hurt)
    # some kills must have hit a stage in flight: it was started again (attempts > 1) and resumed
    attempts = [json.loads(p.read_text()).get("attempts", 1) for p in (hurt / "stages").glob("*/status.json")]
    assert max(attempts) >= 2, "no kill landed inside a stage; widen the delays"
    diff = faults.compare(ref, hurt, "micro")
    assert diff.empty, diff.to_string()
