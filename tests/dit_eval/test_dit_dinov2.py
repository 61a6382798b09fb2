"""FD-DINOv2's extractor on a small, randomly initialised file of the DINOv2 family (timm's ViT class with
DINOv2's patch 14 and layer scale, 64 wide, 2 deep): the same loading and preprocessing code as ViT-L/14."""
import numpy as np
import pytest
import torch
from dit_fakes import synthetic_images

from dit_eval import extractors
from dit_eval.config import DINOv2Config
from dit_eval.dinov2 import dinov2_input, sha256_of
from dit_eval.extractors import load_extractor
from vtp_core.runtime import StageError


def tiny_vit(img_size=224):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=img_size, patch_size=14, embed_dim=64, depth=2, num_heads=1,
                             init_values=1e-5, num_classes=0).eval()


@pytest.fixture
def tiny_file(tmp_path):
    model = tiny_vit()
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_dinov2_features_are_the_cls_token(tiny_file, make_ctx):
    """The stage's extractor gives what the original module gives on the same preprocessed batch
    (same float32 ops; 1e-6 absolute covers kernel-order round-off of LayerNorm-scale features)."""
    model, path = tiny_file
    ctx = make_ctx("dino")
    m = extractors.run(DINOv2Config(path=str(path), sha256=sha256_of(path)), ctx)
    assert m["dim"] == 64 and m["sha"] == sha256_of(path)
    e = load_extractor(ctx.out)
    imgs = synthetic_images(3)[0]  # 32 px grey: resized to 224 and repeated to RGB
    f = e(imgs)
    with torch.no_grad():
        want = model(dinov2_input(imgs, "cpu")).double().numpy()
    assert f.shape == (3, 64) and np.abs(f - want).max() < 1e-6
    assert e.name == "dinov2" and e.sha == m["sha"]


def test_facebookresearch_layout_is_converted(tmp_path, make_ctx):
    """An official-layout file (mask_token, 518 px position grid) loads into the 224 px model."""
    big = tiny_vit(img_size=518)
    sd = {**big.state_dict(), "mask_token": torch.zeros(1, 64)}
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(sd, path)
    ctx = make_ctx("dino_fb")
    extractors.run(DINOv2Config(path=str(path), sha256=sha256_of(path)), ctx)
    f = load_extractor(ctx.out)(synthetic_images(2)[0])
    assert f.shape == (2, 64) and np.isfinite(f).all()


def test_missing_or_mismatching_file_is_refused_in_one_line(tiny_file, make_ctx, tmp_path):
    _, path = tiny_file
    ctx = make_ctx("dino_bad")
    with pytest.raises(StageError, match=r"fid.dinov2.path: .*nope.pth: no such DINOv2 weights file") as e:
        extractors.run(DINOv2Config(path=str(tmp_path / "nope.pth"), sha256="0" * 64), ctx)
    assert "\n" not in str(e.value)
    with pytest.raises(StageError, match=r"fid.dinov2.sha256: .* has sha256 [0-9a-f]{64}, not '0000") as e:
        extractors.run(DINOv2Config(path=str(path), sha256="0" * 64), ctx)
    assert "\n" not in str(e.value)
    ok = make_ctx("dino_ok")  # a file changed after the stage was built is refused when loaded
    extractors.run(DINOv2Config(path=str(path), sha256=sha256_of(path)), ok)
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(StageError, match="fid.dinov2.sha256"):
        load_extractor(ok.out)
