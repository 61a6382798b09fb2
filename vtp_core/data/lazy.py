"""Images and captions read from their files on access, for data too large to decode into memory.

`LazyImages` quacks like the uint8 (N,S,S,3) arrays the rest of the suite indexes: `len`, `shape`,
and `x[i]`, `x[a:b]`, `x[idx]` return decoded ndarrays; `subset(idx)` returns a lazy view (what
`vtp_core.data.take` uses for nested subsets). Decoding runs on a thread pool.

Unreadable images: a lazy dataset cannot drop them up front without decoding everything, so an
unreadable image i is replaced by the next readable one (i+1, i+2, ...: deterministic, so batches stay a
pure function of (seed, step)), logged by path and counted; once the unreadable share of the
distinct images seen exceeds `max_bad_fraction` (once 1/max_bad_fraction or all have been seen) the stage
stops with their list. With no unreadable images lazy and in-memory data are identical.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from vtp_core.data.folders import check_bad_fraction, check_resize, decode_many, default_caption
from vtp_core.data.index import DataIndex

log = logging.getLogger("vtp.data")


class _BadLedger:
    """Unreadable images seen so far (shared by every view of one dataset)."""

    def __init__(self, max_fraction: float, where, total: int):
        self.max_fraction, self.where, self.total = max_fraction, where, total
        self.bad: dict[int, str] = {}
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def record(self, seen: list[int], bad: dict[int, str]) -> None:
        with self.lock:
            for i, src in bad.items():
                if i not in self.bad:
                    log.warning("data: unreadable image %s replaced by the next readable one", src)
            self.bad.update(bad)
            self.seen.update(seen)
            if len(self.seen) * self.max_fraction >= 1 or len(self.seen) == self.total:
                check_bad_fraction(list(self.bad.values()), len(self.seen), self.max_fraction, self.where)


class LazyImages:
    def __init__(self, index: DataIndex, size: int, max_bad_fraction: float, ids: np.ndarray | None = None,
                 ledger: _BadLedger | None = None, resize: str = "center_crop"):
        check_resize(resize)
        self.index, self.size, self.resize = index, size, resize  # resize: 'center_crop' | 'squash' (folders.RESIZES)
        self.ids = np.arange(len(index), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.ledger = ledger or _BadLedger(max_bad_fraction, index.root, len(index))
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.ids), self.size, self.size, 3)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, key) -> "LazyImages":
        return LazyImages(self.index, self.size, self.ledger.max_fraction, self.ids[key], self.ledger, self.resize)

    def __getitem__(self, key) -> np.ndarray:
        ids = self.ids[key]
        if np.ndim(ids) == 0:
            return self._decode(np.asarray([ids]))[0]
        return self._decode(np.asarray(ids).reshape(-1)).reshape(*np.shape(ids), self.size, self.size, 3)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _decode(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.size, self.size, 3), dtype=np.uint8)
        todo, seen, bad = list(range(len(ids))), [], {}
        current = [int(i) for i in ids]
        n = len(self.index)
        for _ in range(n):  # each round retries the unreadable ones with their next index
            if not todo:
                break
            results = decode_many(self.index, [current[k] for k in todo], self.size, self.resize)
            retry = []
            for k, img in zip(todo, results):
                seen.append(current[k])
                if isinstance(img, Exception):
                    bad[current[k]] = self.index.source(current[k])
                    current[k] = (current[k] + 1) % n
                    retry.append(k)
                else:
                    out[k] = img
            todo = retry
        if todo:
            raise RuntimeError(f"{self.index.root}: no readable image at all")
        self.ledger.record(seen, bad)
        return out


class LazyCaptions:
    """Per-image captions read on access (the file's caption, else the class template)."""

    def __init__(self, index: DataIndex, ids: np.ndarray | None = None):
        self.index = index
        self.ids = np.arange(len(index), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, key) -> "LazyCaptions":
        return LazyCaptions(self.index, self.ids[key])

    def __getitem__(self, i: int) -> str:
        j = int(self.ids[i])
        return default_caption(self.index.caption(j), int(self.index.label[j]), self.index.class_names)
