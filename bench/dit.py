"""DiT train step vs a timm-block reference of the same shape, Fréchet distance vs scipy sqrtm."""
from __future__ import annotations


def run() -> list[dict]:
    from dit_eval.bench import bench_dit_train_step, rows

    out = rows(frechet_dim=2048)
    b = bench_dit_train_step(size="B/1", latent_shape=(64, 16, 16), batch_size=4, iters=3)
    out.append({"bench": "dit B/1 (16x16x64) train images/s (ref: timm ViT blocks)",
                "value": round(b["ours_images_per_s"], 2), "reference": round(b["timm_ref_images_per_s"], 2),
                "ratio": None, "ok": None})
    for r in out:
        if "images/s (ref" in r["bench"]:  # ratio = our speed / reference speed; target: not slower
            r["ratio"] = round(r["value"] / r["reference"], 3)
            r["ok"] = r["ratio"] >= 0.95
        if r["bench"].startswith("frechet"):
            r["ok"] = bool(r["ok"]) and r["ratio"] <= 1 / 3  # target: at least 3x faster than sqrtm
    return out
