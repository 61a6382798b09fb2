"""SLURM dispatch through submitit: submit a plan's missing stages as job arrays and return.

Why this shape:
- One job array per (dependency level, stage kind), chunked under the cluster's MaxArraySize
  (submitit does not split arrays, submitit#1624) and throttled with `array_parallelism`.
- Dependencies are `afterany:<upstream array job ids>`, never `afterok`: one array holds the
  stages of every cell, so `afterok` would let one failed cell block the whole level (and with
  `kill_invalid_depend` cancel it). With `afterany` a downstream task always starts once its
  upstream arrays have ended; `run_stage` then checks the status files and returns 'blocked' for
  a cell whose upstream failed (cost: a few seconds of an allocation) while every other cell goes
  on. The status files are the truth, not the scheduler (sacct may be disabled, submitit#1720).
- Fire and forget: `submit_slurm` returns job ids and never waits on `job.result()` (which
  blocks forever without accounting when a job is killed). `make status` / `reconcile` read the
  stage folders and ask `squeue`/`sacct` only to explain stages that claim to be running.
- Re-submitting a partly finished study submits only stages that are not done/diverged, not held
  by a live lease and not waiting in the queue from an earlier submission (`<root>/slurm/jobs.jsonl`).
- Every job records the git commit and runs from a snapshot of the code (tracked + untracked,
  non-ignored files copied to `<root>/slurm/code/<commit>-<hash>/`), so editing the tree while
  jobs wait in the queue does not change what they run.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from cluster.job import StageJob, held_elsewhere
from cluster.store import FINAL, Store, now
from sweeps.errors import SpecError
from sweeps.schema import Resources
from sweeps.schema import resources_for as schema_resources_for
from vtp_core.cfg import load

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- resources
# The fields, their types and ranges are `sweeps.schema.Resources` (the one config system); a study's
# `resources:` is validated when it is loaded. These two functions keep the dict-shaped API for callers
# that pass their own mapping.
DEFAULT_MAX_ARRAY_SIZE = 1000
MAX_PICKLE_BYTES = 1 << 20
LIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED")
FAILED_STATES = ("OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "CANCELLED", "PREEMPTED", "FAILED", "BOOT_FAIL",
                 "DEADLINE")


def stage_kinds() -> tuple[str, ...]:
    from cluster import stages

    return tuple(stages.ENTRY)


def validate_resources(resources: Mapping | None, kinds: Iterable[str] | None = None,
                       where: str = "resources") -> dict[str, Resources]:
    """A `resources:` mapping (raw YAML data or `Resources` already) as {key: Resources}; a bad key, field or
    value raises SpecError (one line)."""
    keys = ("default", *(tuple(kinds) if kinds is not None else stage_kinds()))
    resources = resources or {}
    if not isinstance(resources, Mapping):
        raise SpecError(f"{where}: expected a mapping of stage -> settings (keys: {', '.join(keys)})")
    out: dict[str, Resources] = {}
    for key, fields in resources.items():
        if key not in keys:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(keys)})")
        out[key] = fields if isinstance(fields, Resources) else load(Resources, fields or {}, "", path=f"{where}.{key}")
    return out


def resources_for(resources: Mapping[str, Resources], kind: str) -> dict[str, Any]:
    """DEFAULT_RESOURCES <- resources.default <- resources[kind]; additional_parameters are merged."""
    return schema_resources_for(dict(resources), kind)


# ---------------------------------------------------------------------------- scheduler queries
def _run(cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def slurm_available() -> bool:
    if not shutil.which("sinfo"):
        return False
    r = _run(["sinfo", "-h", "-o", "%t"], timeout=5)
    return bool(r and r.returncode == 0 and r.stdout.strip())


def max_array_size(default: int = DEFAULT_MAX_ARRAY_SIZE) -> int:
    """The cluster's MaxArraySize (`scontrol show config`), else `default`."""
    r = _run(["scontrol", "show", "config"], timeout=20)
    if r and r.returncode == 0:
        for line in r.stdout.splitlines():
            k, _, v = line.partition("=")
            if k.strip() == "MaxArraySize":
                try:
                    return int(v.strip())
                except ValueError:
                    break
    return default


def queue_states(job_ids: Iterable[str] | None = None) -> dict[str, dict]:
    """job id (`123` or `123_4`) -> {state, reason} from squeue (jobs still in slurmctld memory,
    finished ones for MinJobAge), completed by sacct when accounting works. Never raises."""
    out: dict[str, dict] = {}
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%A|%T|%r"] + (["-u", user] if user else [])
    r = _run(cmd)
    if r and r.returncode == 0:
        for line in r.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 4:
                jid, raw, state, reason = parts
                out[jid] = out[raw] = {"state": state, "reason": reason, "source": "squeue"}
    want = [j for j in (job_ids or []) if j and j not in out]
    if want and shutil.which("sacct"):
        r = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(want)])
        if r and r.returncode == 0:  # "Slurm accounting storage is disabled" -> rc 1, ignored
            for line in r.stdout.splitlines():
                parts = line.strip().split("|")
                if len(parts) >= 2 and parts[0]:
                    state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0"
                    out[parts[0]] = {"state": state, "reason": parts[2] if len(parts) > 2 else "", "source": "sacct"}
    return out


# ---------------------------------------------------------------------------- code snapshot
def git_commit(repo: Path = REPO) -> str | None:
    r = _run(["git", "-C", str(repo), "rev-parse", "HEAD"], timeout=10)
    if not r or r.returncode != 0:
        return None
    commit = r.stdout.strip()
    d = _run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], timeout=10)
    return commit + ("-dirty" if d and d.stdout.strip() else "")


def snapshot_code(dest_root: Path, repo: Path = REPO, max_bytes: int = 200 << 20) -> Path:
    """Copy the repository's tracked and untracked, non-ignored files to `dest_root/<commit>-<hash>/`
    (reused when the same content was snapshotted before). Untracked files are included on purpose:
    work in progress is what a sweep runs, and the content hash names it."""
    r = _run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "-z"], timeout=30)
    if not r or r.returncode != 0:
        raise SpecError(f"snapshot: {repo} is not a git checkout (pass snapshot=False to run from the tree)")
    files = sorted(f for f in r.stdout.split("\0") if f and (repo / f).is_file())
    h = hashlib.sha256()
    total = 0
    for f in files:
        p = repo / f
        total += p.stat().st_size
        if total > max_bytes:
            raise SpecError(f"snapshot: the tree is over {max_bytes >> 20} MB ({f}); git-ignore data or pass snapshot=False")
        h.update(f.encode() + b"\0" + p.read_bytes() + b"\0")
    commit = (git_commit(repo) or "nogit").replace("-dirty", "")[:12]
    dest = Path(dest_root) / f"{commit}-{h.hexdigest()[:10]}"
    if (dest / ".complete").exists():
        return dest
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    for f in files:
        (tmp / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, tmp / f)
    (tmp / ".complete").write_text(json.dumps({"commit": git_commit(repo), "files": len(files), "time": now()}))
    try:
        os.rename(tmp, dest)
    except OSError:  # another submission made the same snapshot first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


# ---------------------------------------------------------------------------- submission
@dataclass
class Submission:
    jobs: dict[str, str] = field(default_factory=dict)  # stage id -> job id (123_4) submitted now
    arrays: list[dict] = field(default_factory=list)  # {job_id, kind, level, n, dependency}
    skipped: dict[str, str] = field(default_factory=dict)  # stage id -> why (done/diverged/running/queued)
    code_dir: str | None = None
    commit: str | None = None

    def summary(self) -> str:
        why = defaultdict(int)
        for v in self.skipped.values():
            why[v.split(" ")[0]] += 1
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(why.items())) or "none"
        return (f"submitted {len(self.jobs)} stages in {len(self.arrays)} arrays "
                f"({', '.join(a['job_id'] for a in self.arrays) or '-'}); skipped: {skipped}")


def jobs_log(store: Store) -> Path:
    return Path(store.root) / "slurm" / "jobs.jsonl"


def last_submissions(store: Store) -> dict[str, str]:
    """stage id -> the job id it was last submitted as (from `<root>/slurm/jobs.jsonl`)."""
    out: dict[str, str] = {}
    try:
        lines = jobs_log(store).read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed submitter
        out[row["stage"]] = row["job_id"]
    return out


def _live(job_id: str | None, queue: dict[str, dict]) -> bool:
    return bool(job_id) and queue.get(str(job_id), {}).get("state") in LIVE_STATES


def submit_slurm(plan, store: Store, resources: Mapping | None = None, *, folder: str | Path | None = None,
                 max_array: int | None = None, snapshot: bool = True, pythonpath: Sequence[str] = (),
                 entries: Mapping[str, str] | None = None, setup: Sequence[str] = (), max_num_timeout: int = 3,
                 device: str | None = None, dry_run: bool = False,
                 echo: Callable[[str], Any] = print) -> Submission:
    """Submit every stage of `plan` that still needs to run; return at once with the job ids.

    resources: the study's `resources:` (default: plan.study.resources), validated here.
    max_array: cap on tasks per array (default: the cluster's MaxArraySize, else 1000).
    snapshot:  run jobs from a copy of the code (see module doc); False runs from this tree.
    pythonpath: extra import paths for the jobs, relative to the code folder (or absolute).
    entries:   extra stage kinds for the jobs (kind -> "module:fn"), e.g. test stages.
    dry_run:   decide and print the arrays (kind, level, size, resources, dependencies), submit nothing.
    """
    import submitit

    store = Store(Path(store.root).resolve())
    res_cfg = validate_resources(getattr(plan.study, "resources", {}) if resources is None else resources,
                                 kinds=set(stage_kinds()) | set(entries or {}) | {s.kind for s in plan.stages.values()})
    sub = Submission(commit=git_commit())
    queue = queue_states()
    previous = last_submissions(store)

    # 1. what to submit; live jobs elsewhere become dependencies
    todo: dict[str, Any] = {}
    external: dict[str, str] = {}  # stage id -> live job id of a stage not submitted now
    for st in plan.stages.values():
        status = store.status(st.id)
        state = status.get("status", "pending")
        if state in FINAL:
            sub.skipped[st.id] = state
            continue
        if held_elsewhere(store, st.id):
            sub.skipped[st.id] = f"running (held by {status.get('host')} pid {status.get('pid')}, job {status.get('job_id')})"
            if _live(status.get("job_id"), queue):
                external[st.id] = status["job_id"]
            continue
        for jid in (status.get("job_id") if state == "running" else None, previous.get(st.id)):
            if _live(jid, queue):
                sub.skipped[st.id] = f"queued (job {jid} {queue[jid]['state']})"
                external[st.id] = jid
                break
        else:
            todo[st.id] = st
    # 2. levels among the stages submitted now
    level: dict[str, int] = {}
    for sid, st in todo.items():  # plan.stages is topological
        level[sid] = 1 + max((level[u] for u in st.upstream_ids if u in level), default=-1)
    groups: dict[tuple[int, str], list] = defaultdict(list)
    for sid, st in todo.items():
        groups[(level[sid], st.kind)].append(st)
    if not todo:
        echo(f"slurm: nothing to submit ({len(sub.skipped)} stages done, running or queued)")
        return sub
    # 3. arrays: (level, kind) groups chunked under MaxArraySize, each after the arrays holding its upstream
    cap = max_array or (DEFAULT_MAX_ARRAY_SIZE if dry_run else max_array_size())
    arrays = [(lvl, kind, stages[i:i + cap]) for (lvl, kind), stages in sorted(groups.items())
              for i in range(0, len(stages), cap)]
    job_of: dict[str, str] = dict(external)  # stage id -> job id it runs (or waits) in
    if not dry_run:
        code = snapshot_code(Path(store.root) / "slurm" / "code") if snapshot else REPO
        sub.code_dir = str(code)
        paths = [str(p if Path(p).is_absolute() else Path(code) / p) for p in (*pythonpath, ".")]
        env_lines = [f"export VTP_GIT_COMMIT={shlex.quote(sub.commit or 'unknown')}",
                     f"export VTP_CODE_DIR={shlex.quote(str(code))}",
                     "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}", f"cd {shlex.quote(str(code))}",
                     f"export PYTHONPATH={shlex.quote(':'.join(paths))}${{PYTHONPATH:+:$PYTHONPATH}}", *setup]
        log_dir = Path(folder) if folder else Path(store.root) / "slurm" / "logs"
    for lvl, kind, chunk in arrays:
        r = resources_for(res_cfg, kind)
        deps = sorted({job_of[u].split("_")[0] for st in chunk for u in st.upstream_ids if u in job_of})
        extra = dict(r["additional_parameters"])
        if deps:
            extra["dependency"] = "afterany:" + ":".join(deps)
        info = {"kind": kind, "level": lvl, "n": len(chunk), "dependency": extra.get("dependency")}
        if dry_run:
            info["job_id"] = f"<{len(sub.arrays)}>"
            job_of.update({st.id: info["job_id"] for st in chunk})
            sub.arrays.append(info)
            shown = {k: v for k, v in r.items() if v not in (None, {})}
            echo(f"slurm (dry run): array {info['job_id']} {kind} level {lvl}: {len(chunk)} tasks, {shown}"
                 + (f" after {extra['dependency']}" if deps else ""))
            continue
        ex = submitit.AutoExecutor(folder=log_dir, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
        params = dict(name=f"vtp-{kind}", timeout_min=r["timeout_min"], nodes=r["nodes"],
                      tasks_per_node=r["tasks_per_node"], cpus_per_task=r["cpus_per_task"],
                      slurm_array_parallelism=r["array_parallelism"], slurm_additional_parameters=extra,
                      slurm_setup=env_lines,
                      # one task that dies ends the job's other tasks at once (they would wait in a collective)
                      slurm_srun_args=["--kill-on-bad-exit=1"])
        for k in ("mem_gb", "gpus_per_node"):
            if r.get(k) is not None:
                params[k] = r[k]
        if r.get("partition"):
            params["slurm_partition"] = r["partition"]
        ex.update_parameters(**params)
        fns = [StageJob(str(store.root), st, commit=sub.commit, entries=dict(entries or {}), device=device)
               for st in chunk]
        size = max(len(pickle.dumps(f)) for f in fns)
        if size > MAX_PICKLE_BYTES:
            raise SpecError(f"slurm: a {kind} job pickles to {size} bytes (> {MAX_PICKLE_BYTES}); "
                            "stage configs must hold paths and numbers, not data or models")
        submitted = ex.submit_array(fns)
        info.update(job_id=submitted[0].job_id.split("_")[0], max_pickle_bytes=size)
        sub.arrays.append(info)
        jobs_log(store).parent.mkdir(parents=True, exist_ok=True)
        with open(jobs_log(store), "a") as fh:
            for st, job in zip(chunk, submitted):
                job_of[st.id] = sub.jobs[st.id] = job.job_id
                fh.write(json.dumps({"stage": st.id, "job_id": job.job_id, "kind": kind, "level": lvl,
                                     "commit": sub.commit, "time": now()}) + "\n")
        echo(f"slurm: array {info['job_id']} {kind} level {lvl}: {len(chunk)} tasks"
             + (f" after {extra['dependency']}" if deps else ""))
    return sub


# ---------------------------------------------------------------------------- reconciliation
def reconcile(plan, store: Store, record: bool = True, queue: dict[str, dict] | None = None) -> list[dict]:
    """Explain every stage that is not finished but claims to be running or was submitted.

    The stage folder is the truth; the scheduler only explains it. One row per such stage:
    {stage, status, job_id, scheduler (state or None), verdict, reason} with verdict
      alive  - the lease is held (a live process runs it) or its job is pending/running;
      stale  - status says running, no lease, the job is gone or unknown (killed, node lost);
      failed - like stale, and the scheduler says why (OUT_OF_MEMORY, TIMEOUT, CANCELLED, ...):
               with record=True the stage is marked failed with that reason (under its lease);
      lost   - pending, submitted, but its job has left the queue without running it
               (cancelled while pending, an invalid dependency); re-submit.
    Works without accounting: squeue covers running jobs and finished ones for MinJobAge.
    """
    previous = last_submissions(store)
    rows: list[dict] = []
    cand = []
    for st in plan.stages.values():
        status = store.status(st.id)
        state = status.get("status", "pending")
        if state == "running" or (state in ("pending", "preempted", "failed") and st.id in previous):
            cand.append((st, status, state))
    if queue is None:
        ids = {status.get("job_id") for _, status, _ in cand} | {previous.get(st.id) for st, _, _ in cand}
        queue = queue_states(sorted(i for i in ids if i)) if cand else {}
    for st, status, state in cand:
        jid = status.get("job_id") if state == "running" else previous.get(st.id)
        q = queue.get(str(jid)) if jid else None
        sched = q["state"] if q else None
        row = {"stage": st.id, "kind": st.kind, "status": state, "job_id": jid, "scheduler": sched, "reason": None}
        if state == "running":
            if held_elsewhere(store, st.id) or sched in LIVE_STATES:
                row["verdict"] = "alive"
            elif sched in FAILED_STATES:
                row["verdict"] = "failed"
                row["reason"] = f"slurm job {jid}: {sched}" + (f" ({q['reason']})" if q.get("reason") not in (None, "", "None") else "")
                if record:
                    with store.lease(st.id) as held:
                        if held and store.state(st.id) == "running":
                            store.set_status(st.id, "failed", reason=row["reason"], scheduler_state=sched, ended=now())
            else:
                row["verdict"] = "stale"
                row["reason"] = (f"status running since {status.get('heartbeat')} but no live lease"
                                 + (f" and job {jid} is {sched or 'not known to the scheduler'}" if jid else ""))
        else:
            if sched in LIVE_STATES:
                row["verdict"] = "alive"
            elif state == "pending" and str(status.get("reason") or "").startswith("blocked"):
                row["verdict"] = "blocked"
                row["reason"] = status["reason"]
            elif state == "pending" and not (store.dir(st.id) / "jobs.jsonl").exists():
                row["verdict"] = "lost"
                row["reason"] = f"submitted as {jid} but it left the queue without starting ({sched or 'unknown'})"
            else:
                continue  # ran and ended: the status file says how
        rows.append(row)
    return rows
