"""`python -m cluster.system_packages SCALE`: the Debian packages a study reads that this machine lacks.

Why per study: the only system package a study can need is Fashion-MNIST (`dataset-fashion-mnist`, the
embedded demo's data), and only when it reads it from the Debian path. A cluster study on tar shards or
class folders needs none, so `make sweep` on a login node without root or Debian never reaches apt. The
Makefile hands what this prints to `scripts/install_system.sh`, which installs it as root or stops with one
line saying how to provide the files instead (FASHION_MNIST_DIR).

Prints one package per line (nothing when none is needed); a bad study is one `error:` line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys

from sweeps.errors import SpecError


def missing_packages(study) -> list[str]:
    """Debian packages `study` would read from and that are not installed here."""
    from vtp_core.config import DataConfig
    from vtp_core.fmnist_files import debian_fmnist_missing

    reads = [study.data, study.eval_data]
    if study.extractor.name == "fmnist_cnn":  # trained on Fashion-MNIST from its default place (dit_eval.extractors)
        reads.append(DataConfig(dataset="fashion_mnist"))
    return ["dataset-fashion-mnist"] if any(debian_fmnist_missing(d) for d in reads) else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.system_packages", description=__doc__.splitlines()[0])
    ap.add_argument("scale", help="study name under sweeps/ (e.g. demo) or a YAML path")
    args = ap.parse_args(argv)
    try:
        from sweeps.schema import read_yaml, study_from_doc, study_path

        path = study_path(args.scale)
        if not path.is_file():
            raise SpecError(f"{path}: no such study file")
        # types only (no torch import): the sweep validates the study in full right after
        for pkg in missing_packages(study_from_doc(read_yaml(path), path, validate=False)):
            print(pkg)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
