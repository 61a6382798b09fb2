"""Where Fashion-MNIST's four IDX files are, without importing torch (`make sweep` asks this before the
study runs, to know whether a Debian package is needed at all).

Order: `DataConfig.path`, else $FASHION_MNIST_DIR (a machine without the Debian package: a cluster, another
distribution), else the folder Debian's `dataset-fashion-mnist` installs.
"""
from __future__ import annotations

import os
from pathlib import Path

FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FMNIST_ENV = "FASHION_MNIST_DIR"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fmnist_dir(cfg) -> Path:
    """The folder `cfg` (a DataConfig with dataset fashion_mnist) reads."""
    return Path(cfg.path or os.environ.get(FMNIST_ENV) or FMNIST_DEFAULT)


def debian_fmnist_missing(cfg) -> bool:
    """True when `cfg` reads Fashion-MNIST from the Debian path and a file is missing there: the only case in
    which installing a Debian package (dataset-fashion-mnist) would help."""
    if cfg.dataset != "fashion_mnist" or fmnist_dir(cfg) != Path(FMNIST_DEFAULT):
        return False
    return not all((Path(FMNIST_DEFAULT) / f).is_file() for split in FILES.values() for f in split)


def missing_message(f: Path) -> str:
    """One line: which file is missing and the two ways to provide it."""
    return (f"Fashion-MNIST file {f} not found: install the Debian package dataset-fashion-mnist, or point "
            f"{FMNIST_ENV} (or DataConfig.path) at a folder with its four IDX files "
            f"({', '.join(FILES['train'] + FILES['test'])})")
