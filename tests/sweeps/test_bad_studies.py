"""A battery of bad study files, each refused by `python -m cluster sweep <file> --dry` with one line.

Every file in tests/sweeps/bad_studies/ is the tiny test study (TINY_STUDY of tests/conftest.py: Fashion-MNIST
at 32 px, tiny sizes, rec_loss l1) with exactly one defect. Its first line says what the refusal must say:

    # expect: <first> ; <substring> ; ...

The CLI must return 2, print nothing on stdout and exactly one line `error: <file>: <message>` on stderr,
write nothing under --results, and never show a traceback. `<message>` must start with <first> (the field
path as the user wrote it, e.g. `data.image_size: ...`, or `line N` for syntax) and contain every other
substring (the bad value, what is allowed). A few cases need files made at test time (a real LPIPS file
whose sha256 is not the one the study gives, a 0-byte file); they are at the end of this module.

A case the code cannot refuse cleanly yet goes into XFAIL (xfail, strict) with the missing rule as its reason, so
it flips to a failure once the rule is in and the entry is removed.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main as cli

BAD_DIR = Path(__file__).parent / "bad_studies"
REPO = Path(__file__).resolve().parents[2]
FILES = sorted(BAD_DIR.glob("*.yaml"))
HEX = "0123456789abcdef" * 4  # a well-formed sha256 that matches no file

XFAIL: dict[str, str] = {}  # file name -> the rule it still lacks (none today)


def expectations(path: Path) -> list[str]:
    """The substrings of the file's `# expect:` line (the first one starts the message)."""
    first = path.read_bytes().split(b"\n", 1)[0].decode("ascii")
    assert first.startswith("# expect: "), f"{path.name}: the first line must be '# expect: ...'"
    return [s.strip() for s in first[len("# expect: "):].split(";") if s.strip()]


def assert_refused(path: Path, expect: list[str], results: Path, capsys) -> str:
    """Run the dry sweep in-process and check the one-line refusal; returns the line."""
    rc = cli(["--results", str(results), "sweep", str(path), "--dry"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc == 2, f"exit code {rc}, stderr {err!r}"
    assert out == "", f"a refused study prints nothing on stdout, got {out[:500]!r}"
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    line = err.rstrip("\n")
    head = f"error: {path}: "
    assert line.startswith(head), f"the line must start with {head!r}: {line!r}"
    message = line[len(head):]
    assert message.startswith(expect[0]), f"expected the message to start with {expect[0]!r}: {line!r}"
    missing = [s for s in expect[1:] if s not in message]
    assert not missing, f"missing {missing} in {line!r}"
    assert not results.exists() or not any(results.iterdir()), "nothing may be written for a refused study"
    return line


def _params():
    for p in FILES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[p.name])] if p.name in XFAIL else []
        yield pytest.param(p, id=p.stem, marks=marks)


def test_battery_is_complete():
    assert len(FILES) >= 40
    assert set(XFAIL) <= {p.name for p in FILES}, "an xfail names a file that is gone"
    for p in FILES:
        expect = expectations(p)
        assert expect, p.name


@pytest.mark.parametrize("path", list(_params()))
def test_bad_study_refused_with_one_line(path, tmp_path, capsys):
    assert_refused(path, expectations(path), tmp_path / "results", capsys)


def test_exit_code_2_from_a_real_process(tmp_path):
    """Two files through `python -m cluster` in real processes (run side by side): one refused while reading
    the file, one by the planner."""
    names = ("001-not-utf8-latin1.yaml", "036-grid-budget-below-one-step.yaml")
    procs = {}
    for name in names:
        results = tmp_path / f"results-{name}"
        cmd = [sys.executable, "-m", "cluster", "--results", str(results), "sweep", str(BAD_DIR / name), "--dry"]
        procs[name] = (results, subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True))
    for name, (results, proc) in procs.items():
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 2, (name, proc.returncode, err)
        assert "Traceback" not in out + err
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {BAD_DIR / name}: "), err
        expect = expectations(BAD_DIR / name)
        assert lines[0][len(f"error: {BAD_DIR / name}: "):].startswith(expect[0]), err
        assert all(s in lines[0] for s in expect), (expect, err)
        assert not results.exists()


# ---------------------------------------------------------------- cases made at test time
def test_template_itself_is_good(write_study, tmp_path, capsys):
    """The studies below are TINY_STUDY with one change; unchanged it plans (the one change is the defect)."""
    path = write_study("name: template\n")
    assert cli(["--results", str(tmp_path / "results"), "sweep", str(path), "--dry"]) == 0
    capsys.readouterr()


def test_zero_byte_file(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_bytes(b"")
    assert_refused(path, ["expected a mapping with keys", "grid", "tokenizer"], tmp_path / "results", capsys)


def test_study_path_is_a_folder(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.mkdir()
    assert_refused(path, ["no such study file"], tmp_path / "results", capsys)


def test_lpips_file_with_another_sha256(write_study, tmp_path, capsys):
    from vtp_core.losses.lpips import write_random_lpips

    weights = tmp_path / "lpips.pt"
    actual = write_random_lpips(weights)
    assert actual != HEX
    path = write_study(f"tokenizer: {{rec_loss: l1_lpips, lpips_weights: '{weights}', lpips_sha256: '{HEX}'}}\n")
    assert_refused(path, ["tokenizer.lpips_sha256:", str(weights), f"has sha256 {actual}", repr(HEX)],
                   tmp_path / "results", capsys)


def test_refstats_npz_with_another_sha256(write_study, tmp_path, capsys):
    import hashlib

    import numpy as np

    npz = tmp_path / "VIRTUAL_ref.npz"
    np.savez(npz, mu=np.zeros(4), sigma=np.eye(4))
    actual = hashlib.sha256(npz.read_bytes()).hexdigest()
    path = write_study(f"extractor: {{name: inception}}\nrefstats: {{npz: '{npz}', sha256: '{HEX}'}}\n")
    assert_refused(path, ["refstats.sha256:", str(npz), f"has sha256 {actual}", repr(HEX)],
                   tmp_path / "results", capsys)


def test_lr_from_file_with_a_word_for_lr(write_study, tmp_path, capsys):
    tune = tmp_path / "lr-tiny.yaml"
    tune.write_text("encoder: tiny\nlr: fast\n")
    path = write_study(f"tokenizer: {{lr_from: '{tune}'}}\n")
    assert_refused(path, ["tokenizer.lr_from:", str(tune), "'fast'"], tmp_path / "results", capsys)


def test_inception_score_with_the_bundled_inception(write_study, tmp_path, capsys):
    path = write_study("extractor: {name: inception}\nfid: {allow_low_n: true, metrics: [fid, is]}\n")
    assert_refused(path, ["fid.metrics: 'is' needs the Inception's 1008-way softmax layer", "bundled TorchScript",
                          "pt_inception-2015-12-05-6726825d.pth"], tmp_path / "results", capsys)


def test_precision_recall_with_an_adm_reference_batch(write_study, tmp_path, capsys):
    import hashlib

    import numpy as np

    npz = tmp_path / "VIRTUAL_ref.npz"
    np.savez(npz, mu=np.zeros(4), sigma=np.eye(4))
    sha = hashlib.sha256(npz.read_bytes()).hexdigest()
    path = write_study(f"extractor: {{name: inception}}\nrefstats: {{npz: '{npz}', sha256: '{sha}'}}\n"
                       "fid: {allow_low_n: true, metrics: [fid, sfid, precision]}\n")
    assert_refused(path, ["fid.metrics: precision/recall need reference features", "refstats.npz"],
                   tmp_path / "results", capsys)
    path = write_study(f"extractor: {{name: inception}}\nrefstats: {{npz: '{npz}', sha256: '{sha}'}}\n"
                       "fid: {allow_low_n: true, metrics: [fid, sfid]}\n")
    assert_refused(path, ["fid.metrics: 'sfid' needs mu_s/sigma_s", str(npz)], tmp_path / "results", capsys)


def test_dinov2_weights_with_another_sha256(write_study, tmp_path, capsys):
    import hashlib

    weights = tmp_path / "dinov2_vitl14.pth"
    weights.write_bytes(b"not the weights the study names")
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    path = write_study(f"fid: {{allow_low_n: true, metrics: [fid, fd_dinov2], "
                       f"dinov2: {{path: '{weights}', sha256: '{HEX}'}}}}\n")
    assert_refused(path, ["fid.dinov2.sha256:", str(weights), f"has sha256 {actual}", repr(HEX)],
                   tmp_path / "results", capsys)
