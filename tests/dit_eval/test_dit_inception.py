"""The Inception's extra outputs (sFID spatial features, IS logits) from its one forward pass."""
import numpy as np
import pytest
import small_configs as small
import torch
from dit_fakes import synthetic_images

from dit_eval import extractors
from dit_eval.extractors import bundled_inception_path, inception_input, load_extractor
from dit_eval.inception import (
    LOGITS_DIM,
    SPATIAL_DIM,
    from_pytorch_fid,
    from_torchscript,
)


@pytest.fixture(scope="module")
def net():
    return from_torchscript(bundled_inception_path())


def test_spatial_is_mixed_6_conv_first_7_channels_nhwc(net):
    """`spatial` must be Mixed_6d.branch1x1's output (TF mixed_6/conv) as the real forward computes it,
    channels [:7], flattened H, W, C; the features must not change when it is asked for. Same float32 ops
    on the same inputs: equal up to conv-algorithm round-off (1e-5 of activations of order 1)."""
    x = inception_input(synthetic_images(2)[0], "cpu")
    seen = {}
    h = net.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        pool = net(x)
        out = net.forward_all(x)
    h.remove()
    want = seen["o"][:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert out["spatial"].shape == (2, SPATIAL_DIM) == (2, 2023)
    assert torch.allclose(out["spatial"], want, atol=1e-5)
    assert torch.equal(out["features"], pool) and "logits" not in out  # the TorchScript has no softmax layer


def test_logits_from_pytorch_fid_fc(net, make_ctx, tmp_path):
    """A pytorch-fid state_dict with fc: logits = pool3 @ W^T (no bias), and the extractor lists them."""
    sd = dict(net.net.state_dict())
    w = torch.randn(LOGITS_DIM, 2048, generator=torch.Generator().manual_seed(0)) * 0.01
    sd["fc.weight"], sd["fc.bias"] = w, torch.ones(LOGITS_DIM)
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path)
    m = from_pytorch_fid(path)
    x = inception_input(synthetic_images(2)[0], "cpu")
    with torch.no_grad():
        out = m.forward_all(x)
    assert torch.allclose(out["logits"], out["features"] @ w.t(), atol=1e-6)
    ctx = make_ctx("inc")
    extractors.run(small.extractor(name="inception", path=str(path)), ctx)
    e = load_extractor(ctx.out)
    assert e.outputs == ("features", "spatial", "logits")
    f = e.features(synthetic_images(3)[0], ("features", "spatial", "logits"))
    assert f["logits"].shape == (3, LOGITS_DIM) and f["spatial"].shape == (3, SPATIAL_DIM)
    assert np.abs(f["features"] - e(synthetic_images(3)[0])).max() < 1e-6
    sd["fc.weight"] = torch.zeros(10, 2048)
    torch.save(sd, path)
    with pytest.raises(ValueError, match="fc.weight has shape"):
        from_pytorch_fid(path)
