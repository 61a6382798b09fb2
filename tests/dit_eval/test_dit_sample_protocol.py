"""Every sampling option separates stage ids and gFID protocols, so two options never share a curve.

A stage id hashes every versioned field of SampleConfig (sweeps.ids); a gFID's protocol hash covers the
sampler settings the sample stage records (dit_eval.sample.protocol) and analysis keeps only one protocol
per curve (analysis.table.protocol_rows). Fields the chosen sampler does not read (the grid under dopri5,
the tolerances under euler) still change the stage id but not the protocol: equal numbers, one curve.
"""
import dataclasses

import pandas as pd
import pytest
import yaml

from analysis.table import protocol_rows
from dit_eval.config import SampleConfig
from dit_eval.fid import protocol_hash
from dit_eval.sample import protocol, read_protocol
from sweeps.ids import stage_id
from vtp_core.cfg import to_dict

UPSTREAM = ["dit-x-0123456789", "latents-x-0123456789", "pretrain-x-0123456789"]
EULER = SampleConfig()
DOPRI5 = SampleConfig(sampler="dopri5", shift=0.0)
OPTIONS = [  # (base, one option changed)
    (EULER, {"labels": "balanced"}), (EULER, {"sampler": "dopri5"}), (EULER, {"cfg_scale": 1.5}),
    (EULER, {"cfg_interval_start": 0.1}), (EULER, {"steps": 100}), (EULER, {"shift": 0.3}), (EULER, {"ema": False}),
    (DOPRI5, {"rtol": 1e-4}), (DOPRI5, {"atol": 1e-7}), (DOPRI5, {"ode_batch": 125}), (DOPRI5, {"labels": "balanced"}),
]


def _gfid_hash(cfg: SampleConfig) -> str:
    """The protocol hash the fid stage gives a gFID made from this sample config (dit_eval.fid.compute_gfid)."""
    d = {"value": 1.0, "n_samples": cfg.n_samples, "extractor": "inception", "extractor_sha": "abc",
         "reference": "refstats-x", **protocol(cfg), "low_n": False}
    return protocol_hash(d)


@pytest.mark.parametrize("base,change", OPTIONS, ids=[f"{b.sampler}-{next(iter(c))}" for b, c in OPTIONS])
def test_each_option_separates_ids_protocols_and_curves(base, change):
    other = dataclasses.replace(base, **change)
    assert stage_id("sample", "x", other, UPSTREAM) != stage_id("sample", "x", base, UPSTREAM)
    assert _gfid_hash(other) != _gfid_hash(base)
    df = pd.DataFrame({"cell": list("abcd"), "status": "done", "gfid": [10.0, 11.0, 12.0, 13.0],
                       "gfid_protocol": [_gfid_hash(base)] * 3 + [_gfid_hash(other)]})
    kept, protos, n_excluded = protocol_rows(df, "gfid")
    assert list(kept.cell) == ["a", "b", "c"] and n_excluded == 1 and protos["gfid"] == _gfid_hash(base)


@pytest.mark.parametrize("base,change", [(EULER, {"rtol": 1e-4}), (EULER, {"ode_batch": 125}),
                                         (DOPRI5, {"steps": 50}), (DOPRI5, {"shift": 0.075})])
def test_fields_the_sampler_does_not_read_leave_the_protocol(base, change):
    other = dataclasses.replace(base, **change)
    assert stage_id("sample", "x", other, UPSTREAM) != stage_id("sample", "x", base, UPSTREAM)
    assert _gfid_hash(other) == _gfid_hash(base)


def test_protocol_read_back_from_metrics_or_config(tmp_path):
    cfg = dataclasses.replace(DOPRI5, labels="balanced", cfg_scale=2.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    assert read_protocol(tmp_path) == protocol(cfg)
    (tmp_path / "metrics.json").write_text('{"protocol": {"sampler": "euler"}}')
    assert read_protocol(tmp_path) == {"sampler": "euler"}
