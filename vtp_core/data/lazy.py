"""Images and captions read from their files on access, for data too large to decode into memory.

`LazyImages` quacks like the uint8 (N,S,S,3) arrays the rest of the suite indexes: `len`, `shape`,
and `x[i]`, `x[a:b]`, `x[idx]` return decoded ndarrays; `subset(idx)` returns a lazy view (what
`vtp_core.data.take` uses for nested subsets). Decoding runs on a thread pool.

Unreadable images: a lazy dataset cannot drop them up front without decoding everything, so an
unreadable image i is replaced by the next readable one (i+1, i+2, ...: deterministic, so batches stay a
pure function of (seed, step)), logged by path and counted; an unreadable caption file is replaced by the
class template, logged and counted the same way. Once the unreadable share of the distinct images seen
exceeds `max_bad_fraction` (once 1/max_bad_fraction or all have been seen) the stage stops with the count
and the first paths; the count is checked after every decoding round, so a long unreadable run (a
deleted shard) stops the stage instead of being walked through. With no unreadable images lazy and
in-memory data are identical.
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from vtp_core.data.folders import check_bad_fraction, check_resize, decode_many, read_caption
from vtp_core.data.index import DataIndex, UnreadableCaption
from vtp_core.runtime import StageError

log = logging.getLogger("vtp.data")


class _BadLedger:
    """Unreadable images and captions met so far, shared by every view of one dataset, in bounded memory:
    three bitmaps of `total` bits (samples seen, images and captions found unreadable), i.e. 3·total/8 bytes
    (104 MB for 277M images; allocated zeroed, so pages count only once bits in them are set), three
    counters, and at most EXAMPLES paths for the error message. Each unreadable file is logged once."""

    EXAMPLES = 20

    def __init__(self, max_fraction: float, where, total: int):
        self.max_fraction, self.where, self.total = max_fraction, where, total
        nbytes = (total + 7) // 8
        self._seen, self._bad_img, self._bad_cap = (np.zeros(nbytes, np.uint8) for _ in range(3))
        self.n_seen = self.n_bad_img = self.n_bad_cap = 0
        self.examples: list[str] = []
        self.lock = threading.Lock()

    @property
    def n_bad(self) -> int:
        return self.n_bad_img + self.n_bad_cap

    @staticmethod
    def _set(bits: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Set the bits of `ids` (distinct); return those that were not set before."""
        byte, mask = ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8)
        new = ids[(bits[byte] & mask) == 0]
        np.bitwise_or.at(bits, byte, mask)
        return new

    def _note(self, path: str, what: str) -> None:
        log.warning("data: unreadable %s", what)
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(path)

    def record(self, seen: list[int], bad: dict[int, str]) -> None:
        """Images `seen` were decoded; `bad` (index -> path) were unreadable. StageError past max_bad_fraction."""
        with self.lock:
            self.n_seen += len(self._set(self._seen, np.unique(np.asarray(seen, np.int64))))
            if bad:
                for i in self._set(self._bad_img, np.fromiter(bad, np.int64, len(bad))):
                    self.n_bad_img += 1
                    self._note(bad[int(i)], f"image {bad[int(i)]} replaced by the next readable one")
            self._check()

    def record_caption(self, i: int, err: UnreadableCaption | None) -> None:
        """Image i's caption was read; `err` when its file was unreadable. StageError past max_bad_fraction."""
        byte, mask = i >> 3, 1 << (i & 7)
        with self.lock:
            if not self._seen[byte] & mask:
                self._seen[byte] |= mask
                self.n_seen += 1
            if err is not None and not self._bad_cap[byte] & mask:
                self._bad_cap[byte] |= mask
                self.n_bad_cap += 1
                self._note(err.source, f"caption {err}: the class template stands in")
            self._check()

    def _check(self) -> None:
        if self.n_seen * self.max_fraction >= 1 or self.n_seen == self.total:
            check_bad_fraction(self.examples, self.n_seen, self.max_fraction, self.where, count=self.n_bad)


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
        todo = list(range(len(ids)))
        current = [int(i) for i in ids]
        n = len(self.index)
        while todo:  # each round retries the unreadable ones with their next index
            results = decode_many(self.index, [current[k] for k in todo], self.size, self.resize)
            retry, seen, bad = [], [], {}
            for k, img in zip(todo, results):
                seen.append(current[k])
                if isinstance(img, Exception):
                    bad[current[k]] = self.index.source(current[k])
                    current[k] = (current[k] + 1) % n
                    retry.append(k)
                else:
                    out[k] = img
            self.ledger.record(seen, bad)  # raises past max_bad_fraction: an unreadable run is not walked through
            if retry and self.ledger.n_bad_img >= n:  # every walk ends: at a readable image, or here
                raise StageError(f"{self.index.root}: no readable image at all")
            todo = retry
        return out


class LazyCaptions:
    """Per-image captions read on access (the file's caption, else the class template). A caption file that
    cannot be read or decoded gives the template and is counted in `ledger` (the images' ledger)."""

    def __init__(self, index: DataIndex, ledger: _BadLedger, ids: np.ndarray | None = None):
        self.index, self.ledger = index, ledger
        self.ids = np.arange(len(index), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, key) -> "LazyCaptions":
        return LazyCaptions(self.index, self.ledger, self.ids[key])

    def __getitem__(self, i: int) -> str:
        j = int(self.ids[i])
        cap, err = read_caption(self.index, j)
        self.ledger.record_caption(j, err)
        return cap
