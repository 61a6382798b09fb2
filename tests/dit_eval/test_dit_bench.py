from dit_eval.bench import bench_dit_train_step, bench_frechet, rows


def test_bench_functions_return_dicts():
    f = bench_frechet(dim=16, n=64)
    assert f["rel_diff"] < 1e-6 and f["ours_s"] > 0
    d = bench_dit_train_step(batch_size=4, iters=1)
    assert d["ours_images_per_s"] > 0 and d["timm_ref_images_per_s"] > 0


def test_rows_format(monkeypatch):
    import dit_eval.bench as b

    monkeypatch.setattr(b, "bench_dit_train_step", lambda: bench_dit_train_step(batch_size=2, iters=1))
    r = rows(frechet_dim=8)
    assert all(set(x) == {"bench", "value", "reference", "ratio", "ok"} for x in r) and r[1]["ok"] is True
    assert {x["bench"].split()[1] for x in r if x["bench"].startswith("extractor")} == {"inception", "fmnist_cnn"}
    assert all(x["value"] > 0 for x in r if x["bench"].startswith("extractor"))
