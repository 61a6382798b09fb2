"""Fixtures for dit_eval tests (the fakes live in dit_fakes.py, a uniquely named module)."""
from __future__ import annotations

import pytest
from dit_fakes import FakeTokenizer

from vtp_core.runtime import StageContext


@pytest.fixture
def fake_tokenizer():
    return FakeTokenizer().eval()


@pytest.fixture
def make_ctx(tmp_path):
    def _make(name: str, **inputs):
        return StageContext(out=tmp_path / name, inputs=inputs, progress=False)
    return _make
