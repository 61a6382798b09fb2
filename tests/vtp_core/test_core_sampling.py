"""The sample order (`batches.sample_indices`): every epoch visits every image once; with `shuffle_chunk` > 1 it
visits runs of neighbouring images (file order), so a step, and each rank's share of it, reads a few forward runs
instead of one random member per image; its bookkeeping is per chunk, not per image."""
from __future__ import annotations

import numpy as np
import pytest

from vtp_core.batches import _chunk_order, sample_indices
from vtp_core.config import DataConfig, shuffle_chunk


def _runs(ids: np.ndarray) -> int:
    """Maximal runs of consecutive increasing ids."""
    return 1 + int((np.diff(ids) != 1).sum())


@pytest.mark.parametrize("n,chunk", [(1000, 1), (1000, 10), (1003, 10), (997, 64)])
def test_every_epoch_is_a_permutation(n, chunk):
    batch = 37
    steps = -(-3 * n // batch)  # three epochs and a bit
    seq = np.concatenate([sample_indices(n, batch, 5, s, chunk) for s in range(steps)])
    for e in range(3):
        assert sorted(seq[e * n:(e + 1) * n].tolist()) == list(range(n)), (n, chunk, e)
    assert not np.array_equal(seq[:n], seq[n:2 * n])  # epochs are reshuffled


def test_chunks_are_read_as_forward_runs_per_rank():
    n, chunk, world, per_rank_chunks = 100_000, 256, 8, 4
    batch = world * per_rank_chunks * chunk
    for step in range(5):
        ids = sample_indices(n, batch, 0, step, chunk)
        assert _runs(ids) <= batch // chunk + 2  # whole chunks, plus the epoch's short chunk / a boundary
        for r in range(world):
            mine = ids[r * (batch // world):(r + 1) * (batch // world)]
            assert _runs(mine) <= per_rank_chunks + 2
    uniform = sample_indices(n, batch, 0, 0, 1)
    assert _runs(uniform) > batch // 2  # a uniform shuffle: almost every image its own read


def test_chunk_bookkeeping_is_per_chunk():
    order, starts = _chunk_order(10_000_000, 256, 0, 0)
    assert len(order) == len(starts) == 39_063  # two int64 per chunk: 0.6 MB for 10M images


def test_auto_chunk_follows_the_dataset():
    assert shuffle_chunk(DataConfig(dataset="tar")) == 256
    assert shuffle_chunk(DataConfig(dataset="imagefolder")) == 1
    assert shuffle_chunk(DataConfig(dataset="fashion_mnist")) == 1
    assert shuffle_chunk(DataConfig(dataset="imagefolder", shuffle_chunk=32)) == 32

