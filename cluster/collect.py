"""The results table: one row per cell, built from the plan and the stage folders alone.

Works on a partial study (rows of unfinished cells carry their status and reason), so the report
can be made while jobs still run.
"""
from __future__ import annotations

import io

from pathlib import Path

import pandas as pd

from cluster.store import Store
from dit_eval.config import RESULT_KEY
from sweeps.ids import spec_hash
from sweeps.plan import CELL_STAGES, SHARED_STAGES, Plan
from vtp_core.runtime import atomic_write_bytes, atomic_write_text

ORDER = (*SHARED_STAGES, *CELL_STAGES)


def _val(metric):
    if isinstance(metric, dict):
        return metric.get("value")
    return metric


EXTRA_METRICS = tuple(k for k in RESULT_KEY.values() if k != "gfid")  # sfid, inception_score, precision, ...


def _metric_columns(fid: dict) -> dict:
    """The fid stage's other metrics, each with its protocol hash (None where the study did not ask for it)."""
    cols = {}
    for key in EXTRA_METRICS:
        m = fid.get(key) or {}
        cols[key], cols[f"{key}_protocol"] = _val(m), m.get("protocol_hash")
    cols["inception_score_std"] = (fid.get("inception_score") or {}).get("std")
    return cols


def cell_status(store: Store, cell) -> tuple[str, str | None]:
    for kind in ORDER:
        st = store.status(cell.stages[kind])
        s = st.get("status", "pending")
        if s != "done":
            reason = st.get("reason")
            return s, (f"{kind}: {reason}" if reason else kind)
    return "done", None


def table(plan: Plan, store: Store) -> pd.DataFrame:
    rows = []
    dit_spec = spec_hash(plan.study.dit)  # one fixed downstream spec per study (the schema has one `dit:`)
    for c in plan.cells:
        status, reason = cell_status(store, c)
        pre = store.metrics(c.stages["pretrain"])
        probe = store.metrics(c.stages["probe"])
        dit = store.metrics(c.stages["dit"])
        fid = store.metrics(c.stages["fid"])
        gfid = fid.get("gfid") or {}
        rfid = probe.get("rfid") or {}
        row = {
            "study": plan.study.name, "cell": c.id, "recipe": c.recipe, "encoder": c.encoder,
            "anchor": c.anchor,  # a released tokenizer's name; "" for a trained cell (never fitted if set)
            "encoder_params": c.encoder_params, "data_size": c.data_size or pre.get("data_size", 0),  # 0 asked = the whole set
            "budget_flops": c.budget_flops, "budget_kind": c.budget_kind,
            "tokenizer_flops": pre.get("tokenizer_flops", c.tokenizer_flops), "tokenizer_steps": c.steps,
            "samples_seen": pre.get("samples_seen", c.samples_seen),  # images drawn and trained on
            **{f"samples_{k}": (pre.get("samples") or c.samples).get(k, 0) for k in ("clip", "ssl", "rec")},
            "dit_flops": dit.get("dit_flops", c.dit_flops), "seed": c.seed,
            "rfid": _val(rfid), "linear_probe": _val(probe.get("linear_probe")),
            "linear_probe_pre": _val(probe.get("linear_probe_pre")), "zero_shot": _val(probe.get("zero_shot")),
            "zero_shot_top5": _val(probe.get("zero_shot_top5")),
            "zero_shot_resize": probe.get("zero_shot_resize"),  # squash | center_crop: which protocol made zero_shot
            "gfid": _val(gfid), "gfid_protocol": gfid.get("protocol_hash"),
            **_metric_columns(fid), "fid_metrics": ",".join(fid.get("metrics") or plan.study.fid.metrics),
            "rfid_protocol": rfid.get("protocol_hash"), "dit_spec": dit_spec, "status": status, "reason": reason,
        }
        for kind in ("extractor", "refstats", *CELL_STAGES):
            row[f"{kind}_id"] = c.stages[kind]
            row[f"{kind}_wall_s"] = store.metrics(c.stages[kind]).get("wall_s")  # shared stages: one id, counted once
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("rfid", "linear_probe", "linear_probe_pre", "zero_shot", "zero_shot_top5", "gfid", *EXTRA_METRICS,
                "inception_score_std"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def table_path(plan: Plan, store: Store) -> Path:
    """Where `write` puts the study's runs table: `<results>/<study name>/runs.parquet`."""
    return store.study_dir(plan.study.name) / "runs.parquet"


def write(plan: Plan, store: Store) -> Path:
    df = table(plan, store)
    out = table_path(plan, store).parent
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(out / "runs.parquet", buf.getvalue())
    atomic_write_text(out / "runs.csv", df.to_csv(index=False))
    return out / "runs.parquet"


def status_counts(plan: Plan, store: Store) -> tuple[pd.DataFrame, list[tuple[str, str, str]]]:
    """Counts per stage kind and status, and (stage id, status, reason) of every failure."""
    rows, failures = [], []
    for st in plan.stages.values():
        s = store.status(st.id)
        state = s.get("status", "pending")
        if state == "running" and not store.is_leased(st.id):
            state = "stale"  # its process died without a word: a re-run resumes it
        rows.append({"stage": st.kind, "status": state})
        if state in ("failed", "diverged", "preempted", "stale"):
            failures.append((st.id, state, s.get("reason") or ("process died while running" if state == "stale" else "")))
    df = pd.DataFrame(rows)
    counts = df.groupby(["stage", "status"]).size().unstack(fill_value=0) if len(df) else df
    order = [k for k in ORDER if k in counts.index] + [k for k in counts.index if k not in ORDER]
    return counts.loc[order], failures


