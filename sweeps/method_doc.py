"""docs/method.md from the config classes themselves: one row per field with its default, where the value
comes from, what it means and which modules read it.

Why generated: the defaults are the method, and a hand-kept copy drifts. `python -m sweeps.method_doc`
rewrites the file; a test fails when the file and the code disagree.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dit_eval.config import DiTSpec, ExtractorConfig, FIDConfig, LatentsConfig, RefStatsConfig, SampleConfig
from sweeps.schema import Estimate, Grid
from vtp_core.cfg import field_docs
from vtp_core.config import DataConfig, ProbeConfig, TokenizerConfig

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (("grid", Grid), ("tokenizer", TokenizerConfig), ("data / eval_data", DataConfig),
            ("probe", ProbeConfig), ("extractor", ExtractorConfig), ("refstats", RefStatsConfig),
            ("latents", LatentsConfig), ("dit", DiTSpec), ("sample", SampleConfig), ("fid", FIDConfig),
            ("estimate", Estimate))
# where a section's readers live: its own package, and the planner and dispatch that read every section
READERS = {"vtp_core": ("vtp_core", "sweeps", "cluster"), "dit_eval": ("dit_eval", "sweeps", "cluster"),
           "sweeps": ("sweeps", "cluster")}
SKIP_FILES = ("config.py", "method_doc.py", "schema.py")

HEADER = """# The method, field by field

Every default of the suite's configs is the VTP method's value: the paper (VTP, arXiv 2512.13687),
its released code (model definitions, HF configs, the LightningDiT generation configs it ships), or,
where both are silent, the named prior the paper says it follows (DINOv2 for self-supervision,
OpenCLIP for the contrastive side and the optimiser, VA-VAE/LDM for the GAN stage). "ours" marks a
choice of this suite, "yours" a file or path you supply. A study file overrides any field; the
embedded demo (`sweeps/demo.yaml`) overrides many to fit two CPU cores.

This page is generated from the config classes (`python -m sweeps.method_doc`); a test keeps it in
step with the code. *Versioned* fields enter stage ids: changing one re-runs the stages that read it.

Choices the paper leaves open, and what the suite does:
- **Where the heads read**: CLIP and DINO read the pre-bottleneck D-dim tokens, as the released models
  (`heads_read: pre_bottleneck`); the 64-channel latent is trained by reconstruction alone.
- **Warm-up**: linear over min(`warmup_steps`, round(`warmup_fraction` × steps)) steps, then cosine to 0.
  Every cell reaches its peak learning rate, however few steps its budget buys.
- **Samples seen** count the images a recipe trains on: the whole batch with CLIP, the SSL subset
  without it, the reconstruction subset for a plain AE (`budget_samples`, the data-scaling axis).
- **Reconstruction loss**: L1 + LPIPS (VGG16) as the paper; a study without LPIPS weights must say
  `rec_loss: l1`.
- **FID reference**: a seeded, class-balanced subset of the reference split, or an ADM reference
  batch (`refstats: {npz, sha256}`).
- **Stage 2** (GAN decoder tuning) is off: the scaling curves use the stage-1 decoder.
"""


def _tracked(dirs: tuple[str, ...]) -> list[Path]:
    """The committed Python files under `dirs` (git's index, not a directory walk: the page must come out
    the same in a fresh clone as in a working tree with stray files)."""
    try:
        out = subprocess.run(["git", "ls-files", "--", *(f"{d}/*.py" for d in dirs)], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file there is
        out = [str(p.relative_to(REPO)) for d in dirs for p in (REPO / d).rglob("*.py")]
    files = [REPO / f for f in out if (REPO / f).is_file() and Path(f).name not in SKIP_FILES]
    return sorted(files, key=lambda p: (dirs.index(p.relative_to(REPO).parts[0]), p.relative_to(REPO).parts))


def _used_in(name: str, cls: type) -> str:
    """Modules of the section's own package (and the planner/dispatch) that read an attribute of that name."""
    pat = re.compile(rf"\.{re.escape(name)}\b")
    files = _tracked(READERS[cls.__module__.split(".")[0]])
    hits = [str(p.relative_to(REPO)) for p in files if pat.search(p.read_text())]
    return ", ".join(f"`{h}`" for h in hits[:4]) + (f" +{len(hits) - 4}" if len(hits) > 4 else "") or "–"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return "''" if v == "" else str(v)


def render() -> str:
    out = [HEADER]
    for title, cls in SECTIONS:
        out.append(f"\n## `{title}`\n")
        out.append("| field | default | source | meaning | versioned | read in |")
        out.append("|---|---|---|---|---|---|")
        for name, default, md in field_docs(cls):
            if name.split(".")[0] == "data" and cls is not DataConfig:
                continue  # the data sections have their own table
            leaf = name.rsplit(".", 1)[-1]
            cells = [f"`{name}`", _fmt(default), md.get("source") or "–", md.get("doc") or "–",
                     "yes" if md.get("versioned", True) else "no", _used_in(leaf, cls)]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    path = REPO / "docs" / "method.md"
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
