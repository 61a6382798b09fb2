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


def test_time_pair_alternates_the_sides_and_reports_the_median_round_ratio(monkeypatch):
    """Each round times both sides back to back, the order flipped every round, so drift hits both alike."""
    import torch

    import dit_eval.bench as b
    from dit_eval.models import create_dit

    ours, ref = create_dit("tiny", 8, 4, 10), b.TimmBlockDiT("tiny", 8, 4, 10)
    order, fake = [], iter([1.0, 2.0, 4.0, 1.0, 1.0, 3.0])  # rounds' (ours, ref) seconds: (1, 2), (1, 4), (1, 3)
    monkeypatch.setattr(b, "_seconds", lambda step, iters, cuda: order.append(step) or next(fake))
    x, y = torch.randn(2, 8, 4, 4), torch.randint(0, 10, (2,))
    t_ours, t_ref, ratio = b.time_pair(ours, ref, x, y, iters=1, rounds=3, warmup=1)
    first, second = order[0], order[1]
    assert order == [first, second, second, first, first, second]
    assert (t_ours, t_ref, ratio) == (1.0, 3.0, 3.0)
