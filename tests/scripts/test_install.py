"""`make install` and `make sweep` as a user without root, on a machine where apt and sudo must not be called.

Run as root (CI: root in a fresh clone), the commands run as the user `nobody` (`_as_nobody`); run by a non-root
user, as that user; as root where neither way to become nobody works, as root made to look non-root by an `id` on
PATH that answers 65534 (the only way the scripts ask). In every case apt-get, apt, sudo and dpkg on PATH are
stand-ins that log their call and fail, so a call is seen, not just refused.

The environment is the one running these tests, named with PY=: `make install` checks it and installs nothing
(PIP_NO_INDEX would stop a download, and `nobody` cannot write there anyway).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NOBODY = 65534
STANDINS = ("apt-get", "apt", "sudo", "dpkg")

STUDY = """
name: noroot
grid: {{recipe: [ae], encoder: [tiny], data_size: [0], budget_flops: [1.0e12], seed: [0]}}
tokenizer: {{batch_size: 16, latent_channels: 8, patch: 4, decoder: tiny, text: tiny, qk_norm: false, qkv_bias: qv,
  rec_loss: l1, warmup_steps: 10, warmup_fraction: 0.5}}
data: {{dataset: {dataset}, path: '{path}', image_size: 32}}
extractor: {{name: random_cnn}}
refstats: {{split: test, n_images: 8}}
latents: {{n_images: 12, stats_subset: 12}}
probe: {{n_train: 8, n_test: 8}}
dit: {{size: tiny, steps: 20, batch_size: 16, num_classes: 10}}
sample: {{n_samples: 16, steps: 5, shard_size: 16, batch_size: 16}}
fid: {{allow_low_n: true}}
estimate: {{device: cpu, flops_per_s: {{cpu: 3.0e10}}}}
"""


def _as_nobody() -> list[str] | None:
    """A command prefix that runs as the user nobody and can still read this checkout and the interpreter running
    these tests (which may live under root's 0700 home): runuser when nobody can read them anyway; else setpriv
    keeping only CAP_DAC_READ_SEARCH (read any file, write none of root's); None when neither works here."""
    if os.geteuid() != 0:
        return None
    ways = [["runuser", "-u", "nobody", "--"],
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=+dac_read_search",
             "--ambient-caps=+dac_read_search", "--"]]
    probe = [sys.executable, "-c", f"import os; open({str(ROOT / 'Makefile')!r}); assert os.geteuid() == {NOBODY}"]
    for way in ways:
        if shutil.which(way[0]) and subprocess.run([*way, *probe], capture_output=True, timeout=60, check=False).returncode == 0:
            return way
    return None


@pytest.fixture
def noroot():
    """(run(cmd) -> CompletedProcess as a user without root in ROOT, the work folder, the stand-ins' call log)."""
    work = Path(tempfile.mkdtemp(prefix="vtp-noroot-"))  # not under pytest's 0700 basetemp: nobody must get in
    work.chmod(0o777)
    bin_dir = work / "bin"
    bin_dir.mkdir()
    log = work / "calls.log"
    for name in STANDINS:
        (bin_dir / name).write_text(f"#!/bin/sh\necho \"{name} $*\" >> {log}\nexit 1\n")
    wrap = _as_nobody() or []
    if os.geteuid() == 0 and not wrap:
        (bin_dir / "id").write_text(f"#!/bin/sh\n[ \"$1\" = -u ] && {{ echo {NOBODY}; exit 0; }}\nexec /usr/bin/id \"$@\"\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(work),
           "VTP_CACHE": str(work / "cache"), "MPLCONFIGDIR": str(work / "mpl"), "PIP_NO_INDEX": "1",
           "OMP_NUM_THREADS": "1", "LANG": "C.UTF-8"}

    def run(cmd: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*wrap, "env", *[f"{k}={v}" for k, v in {**env, **(extra_env or {})}.items()], *cmd],
                              cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)

    yield run, work, log, ("nobody" if wrap else "id stand-in" if os.geteuid() == 0 else "own user")
    shutil.rmtree(work, ignore_errors=True)


def _calls(log: Path) -> str:
    return log.read_text() if log.exists() else ""


def test_install_and_sweep_of_an_imagefolder_study_call_no_apt(noroot):
    from vtp_core.data import synthetic

    run, work, log, who = noroot
    data = synthetic.write_imagefolder(work / "data", {"train": 3, "val": 2}, n_classes=4)
    subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=True)
    study = work / "noroot.yaml"
    study.write_text(STUDY.format(dataset="imagefolder", path=data))
    py = f"PY={sys.executable}"

    check = run(["make", "--no-print-directory", "install", py, "CHECK=1"])
    assert check.returncode == 0, f"[{who}] {check.stdout}{check.stderr}"
    assert "nothing to install" in check.stdout, check.stdout

    inst = run(["make", "--no-print-directory", "install", py])
    assert inst.returncode == 0 and "nothing to install" in inst.stdout, f"[{who}] {inst.stdout}{inst.stderr}"

    dry = run(["make", "--no-print-directory", "sweep", f"SCALE={study}", "DRY=1", py, f"RESULTS={work / 'results'}"])
    assert dry.returncode == 0, f"[{who}] {dry.stdout}{dry.stderr}"
    assert "study noroot: 1 cells" in dry.stdout and "device-hours (cpu)" in dry.stdout, dry.stdout
    assert _calls(log) == "", f"[{who}] apt/sudo/dpkg were called: {_calls(log)}"


def test_missing_debian_package_without_root_is_one_line(noroot):
    """A package that is not there and no root: one line naming it, exit 2, and apt and sudo never called (dpkg
    is asked whether it is installed, and its stand-in says no)."""
    run, _, log, who = noroot
    out = run(["./scripts/install_system.sh", "vtp-no-such-package"])
    assert out.returncode == 2, f"[{who}] {out.stdout}{out.stderr}"
    assert out.stderr.count("\n") == 1 and "vtp-no-such-package" in out.stderr and "root" in out.stderr, out.stderr
    assert [c.split()[0] for c in _calls(log).splitlines()] == ["dpkg"], _calls(log)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="hides the Debian folder by a "
                    "bind mount in a private mount namespace, which needs root")
def test_missing_fashion_mnist_without_root_names_the_package_and_FASHION_MNIST_DIR(tmp_path):
    """The Debian folder hidden (an empty folder bind-mounted over it, in this command's mount namespace only) and
    the user nobody: `make sweep` of a study that reads it stops with one line naming the Debian package and
    FASHION_MNIST_DIR, exit code 2, nothing called. Where the mount namespace is not allowed, the planner's own
    message is checked instead (the same two ways)."""
    from vtp_core.fmnist_files import FMNIST_DEFAULT

    work = Path(tempfile.mkdtemp(prefix="vtp-nofmnist-"))
    work.chmod(0o777)
    try:
        (work / "empty").mkdir()
        study = work / "fm.yaml"
        study.write_text(STUDY.format(dataset="fashion_mnist", path="").replace("random_cnn", "fmnist_cnn"))
        study.chmod(0o644)
        bin_dir = work / "bin"
        bin_dir.mkdir()
        for name in STANDINS:
            (bin_dir / name).write_text(f"#!/bin/sh\necho \"{name} $*\" >> {work}/calls.log\nexit 1\n")
            (bin_dir / name).chmod(0o755)
        nobody = _as_nobody()
        if nobody is None or subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False).returncode:
            pytest.skip("no way to run as nobody, or no mount namespace here")
        inner = (f"mount --bind {work / 'empty'} {FMNIST_DEFAULT} && {' '.join(nobody)} env PATH={bin_dir}:$PATH "
                 f"HOME={work} VTP_CACHE={work}/cache PIP_NO_INDEX=1 make --no-print-directory sweep SCALE={study} "
                 f"DRY=1 PY={sys.executable} RESULTS={work}/results")
        out = subprocess.run(["unshare", "-m", "sh", "-c", inner], cwd=ROOT, capture_output=True, text=True,
                             timeout=600, check=False)
        assert out.returncode == 2, out.stdout + out.stderr
        line = [x for x in out.stderr.splitlines() if x.startswith("error:")]
        assert len(line) == 1 and "dataset-fashion-mnist" in line[0] and "FASHION_MNIST_DIR" in line[0], out.stderr
        assert not (work / "calls.log").exists(), (work / "calls.log").read_text()
        assert Path(FMNIST_DEFAULT, "train-images-idx3-ubyte.gz").is_file(), "the mount stayed in its namespace"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_which_studies_need_the_debian_package(tmp_path, monkeypatch):
    """Only a study that reads Fashion-MNIST from the Debian path, when it is missing there, asks for the package;
    FASHION_MNIST_DIR or user data never does."""
    from cluster.system_packages import main
    from vtp_core import fmnist_files

    fm, imf = tmp_path / "fm.yaml", tmp_path / "imf.yaml"
    fm.write_text(STUDY.format(dataset="fashion_mnist", path="").replace("random_cnn", "fmnist_cnn"))
    imf.write_text(STUDY.format(dataset="imagefolder", path=str(tmp_path)))
    monkeypatch.setattr(fmnist_files, "FMNIST_DEFAULT", str(tmp_path / "debian-folder-missing"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)

    def needs(study) -> list[str]:
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main([str(study)]) == 0
        return buf.getvalue().split()

    assert needs(fm) == ["dataset-fashion-mnist"] and needs(imf) == []
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert needs(fm) == []
    assert main([str(tmp_path / "nope.yaml")]) == 2


def test_a_checkout_without_venv_names_the_python_it_would_use_and_refuses_an_old_one(tmp_path):
    """Where .venv does not exist yet, `--check` says which interpreter `python -m venv` would use (PYTHON=, e.g. a
    cluster's module) and installs nothing; a Python older than 3.10 (PY= or PYTHON=) is refused in one line."""
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    old = tmp_path / "python3.9"  # answers like a Python 3.9 would
    old.write_text(f"#!/bin/sh\nexec {sys.executable} -c 'import sys; sys.version_info = (3, 9, 18); "
                   f"exec(sys.argv[1])' \"$2\"\n")
    old.chmod(0o755)

    def install(**env) -> subprocess.CompletedProcess:
        return subprocess.run(["./scripts/install.sh", "--check"], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=120, check=False)

    fresh = install(PYTHON=sys.executable)
    assert fresh.returncode == 1 and f"create it with {sys.executable}" in fresh.stdout, fresh.stdout + fresh.stderr
    assert not (tmp_path / ".venv").exists()
    for var in ("PYTHON", "PY"):
        out = install(**{var: str(old)})
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stdout + out.stderr
        assert f"{var}={old} is Python 3.9" in out.stderr and ">= 3.10" in out.stderr, out.stderr
    assert install(PY=sys.executable).returncode == 0, "the environment running these tests has everything"
