import os
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("VTP_CACHE", tempfile.mkdtemp(prefix="vtp-cache-"))  # hermetic FLOPs cache

import pytest  # noqa: E402

MICRO_STUDY = """
name: micro
grid:
  recipe: [ae, clip_ssl_ae]
  encoder: [tiny]
  data_size: [512]
  budget_flops: [{budget}]
  seed: [0]
tokenizer: {{batch_size: 16, latent_channels: 8, patch: 4, decoder: tiny, text: tiny, qk_norm: false, qkv_bias: qv,
  n_local_crops: 2, global_crop: 24, local_crop: 16, dino_prototypes: 256, dino_hidden: 256, dino_bottleneck: 64,
  clip_drop_rate: 0.0, ssl_drop_rate: 0.0, rec_loss: l1, lr: 1.0e-3, weight_decay: 0.05, adam_eps: 1.0e-8,
  warmup_steps: 10, warmup_fraction: 0.5, ckpt_every: 50, log_every: 10}}
data: {{dataset: fashion_mnist, image_size: 32}}
probe: {{n_train: 200, n_test: 100, probe_epochs: 5}}
extractor: {{name: fmnist_cnn, train_steps: 30}}
refstats: {{split: test, n_images: 200}}
latents: {{n_images: 256, stats_subset: 256}}
dit: {{size: tiny, steps: 20, batch_size: 16, lr: 2.0e-3, ema: 0.99, t_mu: -0.5, t_sigma: 1.25, num_classes: 10,
  ckpt_every: 200, log_every: 50}}
sample: {{n_samples: 64, steps: 5, shift: 0.3, shard_size: 32, batch_size: 32}}
fid: {{allow_low_n: true}}
estimate: {{device: cpu, flops_per_s: {{cpu: 3.0e10}}}}
"""


@pytest.fixture
def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous port of multi-process tests)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def micro_study():
    """A 2-cell study small enough for CI; `{budget}` is filled in by the test."""
    return MICRO_STUDY


# What a test study starts from: the embedded demo's sizes (the config defaults are the paper's, for GPUs).
TINY_STUDY = {
    "grid": {"recipe": ["ae", "clip_ssl_ae"], "encoder": ["tiny"], "data_size": [0], "budget_flops": [1.0e12],
             "seed": [0]},
    "tokenizer": {"decoder": "tiny", "text": "tiny", "patch": 4, "latent_channels": 8, "qk_norm": False,
                  "qkv_bias": "qv", "batch_size": 64, "n_local_crops": 2, "global_crop": 24, "local_crop": 16,
                  "dino_prototypes": 256, "dino_hidden": 256, "dino_bottleneck": 64, "clip_drop_rate": 0.0,
                  "ssl_drop_rate": 0.0, "rec_loss": "l1", "lr": 1.0e-3, "weight_decay": 0.05, "adam_eps": 1.0e-8,
                  "warmup_steps": 10, "warmup_fraction": 0.5, "ckpt_every": 50, "log_every": 10},
    "data": {"dataset": "fashion_mnist", "image_size": 32},
    "probe": {"n_train": 2000, "n_test": 1000},
    "extractor": {"name": "fmnist_cnn"},
    "refstats": {"split": "test", "n_images": 2000},
    "latents": {"n_images": 10000, "stats_subset": 10000},
    "dit": {"size": "tiny", "steps": 1000, "batch_size": 64, "lr": 2.0e-3, "ema": 0.99, "t_mu": -0.5, "t_sigma": 1.25,
            "num_classes": 10, "ckpt_every": 200, "log_every": 50},
    "sample": {"n_samples": 1000, "steps": 25, "shift": 0.3, "shard_size": 250},
    "fid": {"allow_low_n": True},
    "estimate": {"device": "cpu", "flops_per_s": {"cpu": 3.0e10}},
}


def tiny_study(text: str) -> str:
    """`text` (a study's YAML) laid over TINY_STUDY, section by section; text that is not a YAML mapping
    (a test of bad syntax) is returned as it is."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if not isinstance(doc, dict):
        return text
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_STUDY.items()}
    for key, value in doc.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
            if key == "grid" and "budget_samples" in value:
                out[key].pop("budget_flops", None)
            if key == "tokenizer" and "lr_from" in value:
                out[key].pop("lr", None)
        else:
            out[key] = value
    return yaml.safe_dump(out, sort_keys=False)


@pytest.fixture
def write_study(tmp_path):
    """Write a study file: laid over TINY_STUDY (small sizes), or the text exactly as given with raw=True."""
    def _write(text: str, name: str = "study.yaml", raw: bool = False):
        p = tmp_path / name
        p.write_text(text if raw else tiny_study(text))
        return p

    return _write
