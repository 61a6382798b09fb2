"""Cheap stand-in stages for executor/store tests (the real ones are tested end to end elsewhere)."""
import json
import os
import time
from dataclasses import dataclass

from sweeps.ids import stage_id
from sweeps.plan import Plan, Stage


@dataclass(frozen=True)
class FakeCfg:
    name: str
    fail: bool = False


class _Study:
    name = "fake"


def fake_run(cfg, ctx):
    log = os.environ.get("FAKE_STAGE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{ctx.out.name} {os.getpid()}\n")
    time.sleep(float(os.environ.get("FAKE_STAGE_SLEEP", "0")))
    if cfg.fail:
        raise ValueError(f"stage {cfg.name} was told to fail")
    (ctx.out / "artefact.json").write_text(json.dumps({"name": cfg.name}))
    return {"value": len(cfg.name)}


def make_plan(n_chains: int = 3, fail: str | None = None) -> Plan:
    """n independent chains a -> b -> c (kind 'fake'), like cells of a study."""
    p = Plan(study=_Study())
    for i in range(n_chains):
        prev = None
        for step in "abc":
            cfg = FakeCfg(f"{i}{step}", fail == f"{i}{step}")
            up = (("fake", prev.id),) if prev else ()
            st = Stage("fake", stage_id("pretrain", cfg.name, cfg, [u for _, u in up]), cfg, up)
            p.add(st)
            prev = st
    return p


def install():
    from cluster import stages

    stages.ENTRY["fake"] = "fake_stages:fake_run"
