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
tokenizer: {{batch_size: 16, latent_channels: 8, patch: 4}}
data: {{dataset: fashion_mnist, image_size: 32}}
probe: {{n_train: 200, n_test: 100, probe_epochs: 5}}
extractor: {{name: fmnist_cnn, train_steps: 30}}
refstats: {{n_images: 200}}
latents: {{n_images: 256, stats_subset: 256}}
dit: {{size: tiny, steps: 20, batch_size: 16}}
sample: {{n_samples: 64, steps: 5, shard_size: 32, batch_size: 32}}
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


@pytest.fixture
def write_study(tmp_path):
    def _write(text: str, name: str = "study.yaml"):
        p = tmp_path / name
        p.write_text(text)
        return p

    return _write
