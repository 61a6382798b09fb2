import pytest
import torch

from dit_eval.flops import dit_train_step_flops
from dit_eval.models import count_params, create_dit, list_sizes
import small_configs as small


@pytest.mark.parametrize("size", list_sizes())
def test_every_size_builds_on_meta(size):
    with torch.device("meta"):
        m = create_dit(size, 8, 8, 10)
        out = m(torch.empty(2, 8, 8, 8), torch.empty(2), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 8, 8, 8)


@pytest.mark.parametrize("size,expected", [("B/1", 130.4e6), ("XL/1", 675.0e6)])
def test_param_counts_match_paper(size, expected):
    with torch.device("meta"):
        m = create_dit(size, 64, 16, 1000)
    assert abs(count_params(m) - expected) / expected < 0.01


def test_tiny_forward_and_adaln_zero_init():
    torch.manual_seed(0)
    m = create_dit("tiny", 8, 8, 10)
    x = torch.randn(3, 8, 8, 8)
    out = m(x, torch.rand(3), torch.tensor([0, 1, 10]))  # 10 = null label
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # adaLN-Zero: the output layer starts at zero


def test_unknown_size_names_valid_ones():
    with pytest.raises(ValueError, match="valid: tiny"):
        create_dit("huge", 8, 8, 10)


def test_flops_measured_and_memoized():
    f = dit_train_step_flops(small.dit(), (8, 8, 8))
    f2 = dit_train_step_flops(small.dit(batch_size=2 * small.dit().batch_size), (8, 8, 8))
    assert f > 0 and abs(f2 / f - 2) < 1e-6
    # B/1 at 256 tokens: between 3x and 6x (params x tokens) (adaLN weights are per sample, not per token)
    fb = dit_train_step_flops(small.dit(size="B/1", batch_size=1), (64, 16, 16))
    assert 3 * 130.4e6 * 256 < fb < 6 * 130.4e6 * 256
