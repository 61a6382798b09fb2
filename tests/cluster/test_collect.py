"""The runs table carries every metric the fid stage computed, each with its protocol hash."""
import math

from cluster.collect import table
from cluster.store import Store
from sweeps.plan import plan
from sweeps.schema import load_study
from vtp_core.runtime import atomic_write_json


def test_metric_columns_with_their_protocols(write_study, tmp_path):
    p = plan(load_study(write_study("grid: {seed: [0]}\nfid: {allow_low_n: true, metrics: [fid, precision, recall]}\n")))
    store = Store(tmp_path / "results")
    c = p.cells[0]
    fid = {"gfid": {"value": 12.5, "protocol_hash": "g1"}, "precision": {"value": 0.7, "protocol_hash": "p1"},
           "recall": {"value": 0.4, "protocol_hash": "r1"}, "metrics": ["fid", "precision", "recall"]}
    atomic_write_json(store.dir(c.stages["fid"]) / "metrics.json", fid)
    row = table(p, store).set_index("cell").loc[c.id]
    assert (row.gfid, row.gfid_protocol) == (12.5, "g1")
    assert (row.precision, row.precision_protocol, row.recall, row.recall_protocol) == (0.7, "p1", 0.4, "r1")
    assert math.isnan(row.sfid) and row.sfid_protocol is None and math.isnan(row.fd_dinov2)
    assert row.fid_metrics == "fid,precision,recall"
