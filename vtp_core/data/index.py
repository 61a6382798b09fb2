"""A byte-range index of user data (ImageFolder trees or webdataset-style tar shards), built once.

Why: DataComp/LAION-scale tar data cannot be decoded into memory, and re-scanning 27k shards every
stage would cost hours. The index records, per image, where its bytes (and its caption's bytes) lie:
(file, offset, size). Any image can then be read with one `pread`, in any order, which keeps training
batches a pure function of (seed, step) with no loader state. Only headers are read to build it.

Compact: eight numpy columns, 37 bytes per image (int32 file ids and sizes, int64 offsets, a bool, an
int32 label), and file paths as one UTF-8 blob with int64 end offsets (`Names`: per shard for tar data,
per image and caption file for ImageFolder data, 8-16 bytes per image there). No per-image Python object
in the finished index or while building it: one streaming pass over the member headers, where only the
shards being scanned hold per-key records, turned into arrays when the shard ends (`_Columns`).
DataComp-277M is then ~10 GB of columns, memory-mapped and shared.

Cached under `$VTP_CACHE/data-index/<key>/` (key: dataset kind, split folder, and its listing: shard
names, sizes and mtimes, or class folders and their mtimes), as .npy files (and files.bin) that later
processes memory-map (eight ranks on a node share one copy in the page cache) plus meta.json (class
names, manifest sha256 — the same manifest `DataConfig.checksum` is checked against). One process
builds a missing cache under an exclusive lock while the others wait for it (`_build_once`).

Bad data is indexed, not fatal: an empty shard has no images; a shard cut short keeps its members up to
the cut (the member cut through reads short, so it is replaced like any unreadable image); a caption
that cannot be read or decoded raises `UnreadableCaption`, which readers treat as a missing caption
and count as bad data (`folders.check_bad_fraction`).
"""
from __future__ import annotations

import array
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtp_core.runtime import StageError, atomic_write_text

log = logging.getLogger("vtp.data")

IMG_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAP_EXT = (".txt", ".json")
COLUMNS = ("img_file", "img_off", "img_size", "cap_file", "cap_off", "cap_size", "cap_json", "label")
DTYPES = {"img_file": np.int32, "img_off": np.int64, "img_size": np.int32, "cap_file": np.int32,
          "cap_off": np.int64, "cap_size": np.int32, "cap_json": np.bool_, "label": np.int32}
RUN_GAP = 64 << 10  # bytes between two members read in one run (tar headers, caption members)
RUN_MAX = 64 << 20  # bytes of one run read
SIZE_MAX = int(np.iinfo(np.int32).max)  # a larger member (no image or caption is 2 GiB) is stored as size -1: unreadable
INDEX_VERSION = 3


class UnreadableCaption(ValueError):
    """A caption file that exists but cannot be read (file gone or cut short) or decoded (bad UTF-8, bad JSON).
    Readers use the class template instead, as for a missing caption, and count it as bad data."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


class Names:
    """File paths relative to the index root: one memory-mapped UTF-8 blob and the int64 end offset of each
    path in it, so a million files cost 8 MB of offsets and no Python objects; `names[i]` decodes path i."""

    def __init__(self, blob: np.ndarray, ends: np.ndarray):
        self.blob, self.ends = blob, ends

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i) -> str:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"file id {i} of {len(self)}")
        i %= len(self)
        start = int(self.ends[i - 1]) if i else 0
        return bytes(self.blob[start:int(self.ends[i])]).decode("utf-8", "surrogateescape")

    @staticmethod
    def load(folder: Path) -> "Names":
        ends = np.load(folder / "files_end.npy", mmap_mode="r")
        size = (folder / "files.bin").stat().st_size
        blob = np.memmap(folder / "files.bin", np.uint8, "r") if size else np.zeros(0, np.uint8)
        return Names(blob, ends)


@dataclass
class DataIndex:
    """Per-image byte ranges, one numpy column each (`COLUMNS`, `DTYPES`); `cap_file` is -1 where an image has
    no caption file, `label` -1 where its class is unknown, a size -1 where the member was too large to index.
    `files` are paths relative to `root` (`Names`)."""

    root: Path
    files: Names
    class_names: tuple[str, ...]
    manifest_sha256: str
    cols: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.cols["img_file"])

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["cols"][name]
        except KeyError:
            raise AttributeError(name) from None

    def read(self, file_id: int, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of file `file_id`. OSError when the file is gone, holds fewer bytes there
        (a shard cut short, a file changed since indexing), or the member was too large to index (size -1)."""
        path = self.root / self.files[file_id]
        if size < 0:
            raise OSError(f"{path}: member at byte {int(offset)} is larger than {SIZE_MAX} bytes")
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, int(size), int(offset))
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(f"{path}: {len(data)} of {int(size)} bytes at byte {int(offset)} (cut short or changed since indexing)")
        return data

    def image_bytes(self, i: int) -> bytes:
        return self.read(self.img_file[i], self.img_off[i], self.img_size[i])

    def image_bytes_many(self, ids) -> list[bytes | OSError]:
        """The bytes of images `ids` (in that order), read in runs: members of one file whose bytes lie within
        `RUN_GAP` of each other (a tar member's header, its caption) are read with one `pread` of the whole run
        (at most `RUN_MAX` bytes) and sliced. The loader samples tar data in chunks of neighbouring members
        (`DataConfig.shuffle_chunk`), so a rank's share of a step is a few forward runs instead of one small
        random read per image. An image that cannot be read is returned as its OSError (a run that fails is
        read again member by member, so each error belongs to its own image)."""
        ids = np.asarray(ids, dtype=np.int64)
        out: list[bytes | OSError] = [b""] * len(ids)
        order = np.lexsort((self.img_off[ids], self.img_file[ids]))
        run: list[int] = []  # positions in `ids`, sorted by (file, offset)

        def flush() -> None:
            if run:
                self._read_run([int(ids[k]) for k in run], run, out)
                run.clear()

        for k in order:
            i = int(ids[k])
            if run:
                j = int(ids[run[-1]])
                start = int(self.img_off[int(ids[run[0]])])
                end = int(self.img_off[i]) + max(int(self.img_size[i]), 0)
                if (self.img_file[i] != self.img_file[j] or self.img_size[i] < 0
                        or int(self.img_off[i]) - (int(self.img_off[j]) + int(self.img_size[j])) > RUN_GAP
                        or end - start > RUN_MAX):
                    flush()
            run.append(int(k))
        flush()
        return out

    def _read_run(self, members: list[int], slots: list[int], out: list) -> None:
        first, last = members[0], members[-1]
        start = int(self.img_off[first])
        try:
            if self.img_size[last] < 0 or len(members) == 1:
                raise OSError("read alone")
            blob = self.read(self.img_file[first], start, int(self.img_off[last]) + int(self.img_size[last]) - start)
        except OSError:  # one by one: each image gets its own bytes or its own error
            for i, k in zip(members, slots):
                try:
                    out[k] = self.image_bytes(i)
                except OSError as exc:
                    out[k] = exc
            return
        for i, k in zip(members, slots):
            a = int(self.img_off[i]) - start
            out[k] = blob[a:a + int(self.img_size[i])]

    def caption(self, i: int) -> str | None:
        """Image i's caption; None when it has no caption file (or an empty one, or JSON with no caption/text).
        UnreadableCaption when its file cannot be read or decoded."""
        if self.cap_file[i] < 0:
            return None
        try:
            return caption_from(self.read(self.cap_file[i], self.cap_off[i], self.cap_size[i]), bool(self.cap_json[i]))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise UnreadableCaption(self._name(self.cap_file[i], self.cap_off[i]), str(exc)) from None

    def source(self, i: int) -> str:
        """A human-readable name of image i for logs: its path, or shard:member for tar data."""
        return self._name(self.img_file[i], self.img_off[i])

    def caption_source(self, i: int) -> str:
        """The same for image i's caption file (its image's path where it has none)."""
        return self.source(i) if self.cap_file[i] < 0 else self._name(self.cap_file[i], self.cap_off[i])

    def _name(self, file_id: int, offset: int) -> str:
        path = self.root / self.files[file_id]
        if path.suffix.lower() != ".tar" or offset < 512:
            return str(path)
        try:  # the member's header block sits right before its data (no long-name extension here)
            name = tarfile.TarInfo.frombuf(self.read(file_id, offset - 512, 512), tarfile.ENCODING, "surrogateescape").name
        except (tarfile.TarError, OSError):  # the shard is gone or cut short: name the byte offset
            name = f"@{int(offset)}"
        return f"{path}:{name}"


def caption_from(data: bytes, is_json: bool) -> str | None:
    """The caption text of a .txt (or a .json's "caption"/"text" field); None when empty or absent. Bytes that
    are not UTF-8, or not JSON where JSON is expected, raise ValueError: the caption is unreadable."""
    text = data.decode("utf-8")
    if is_json:
        obj = json.loads(text)
        text = (obj.get("caption") or obj.get("text") or "") if isinstance(obj, dict) else ""
        if not isinstance(text, str):
            raise ValueError(f"JSON caption is a {type(text).__name__}, not a string")
    return text.strip() or None


def split_dir(path: str, dataset: str, split: str) -> Path:
    if not path:
        raise StageError(f"DataConfig.path: required for dataset '{dataset}'")
    root = Path(path)
    names = [split] + (["val"] if split == "test" else [])
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise StageError(f"DataConfig.path: {root} has no '{'/'.join(names)}' folder for split '{split}'")


def expand_braces(pattern: str) -> list[str]:
    """webdataset shard patterns: '/d/{00000..00099}.tar' -> 100 paths (zero padding kept; several groups ok)."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not m:
        return [pattern]
    a, b = m.group(1), m.group(2)
    width = len(a) if a.startswith("0") else 0
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [p for i in range(int(a), int(b) + 1) for p in expand_braces(f"{head}{i:0{width}d}{tail}")]


def _sources(path: str, dataset: str, split: str) -> tuple[Path, list[Path]]:
    """(root folder, shard files or class folders) of a split. A tar shard pattern is the train split."""
    if dataset == "tar" and "{" in path:
        if split != "train":
            raise StageError(f"DataConfig.path: the shard pattern {path} provides the train split only, "
                             f"asked for '{split}'; set `eval_data:` to a folder with train/ and val/ for evaluation")
        shards = [Path(p) for p in expand_braces(path)]
        missing = [p for p in shards if not p.is_file()]
        if missing:
            raise StageError(f"DataConfig.path: {len(missing)} of {len(shards)} shards of {path} are missing "
                             f"(first: {missing[0]})")
        root = Path(os.path.commonpath([str(p.parent) for p in shards]))
        return root, shards
    d = split_dir(path, dataset, split)
    if dataset == "tar":
        return d, sorted(p for p in d.iterdir() if p.suffix.lower() == ".tar" and p.is_file())
    return d, sorted(p for p in d.iterdir() if p.is_dir())


# ---------------------------------------------------------------------------- building
def _listing(sources: list[Path], dataset: str) -> list[tuple[str, int, int]]:
    out = []
    for p in sources:
        st = p.stat()
        out.append((str(p), st.st_size if dataset == "tar" else 0, st.st_mtime_ns))
    return out


@dataclass
class _Part:
    """The images of one shard or class folder as index columns (`label`: ids into `classes`, -1 none; `img_file`
    and `cap_file` filled in), and their manifest lines. Everything per image is in numpy arrays."""

    cols: dict[str, np.ndarray]
    classes: list[str]
    manifest: bytes

    def __len__(self) -> int:
        return len(self.cols["img_off"])


def _fit(size: int) -> int:
    return size if size <= SIZE_MAX else -1


class _Columns:
    """The index being built: per column, a list of numpy chunks (one per shard or class folder), written as
    .npy without concatenating them. Memory: the columns' own bytes (`DTYPES`, 37 per image) plus one array
    header per chunk; class texts are mapped to ids as they come and sorted once at the end."""

    def __init__(self) -> None:
        self.chunks: dict[str, list[np.ndarray]] = {c: [] for c in COLUMNS}
        self.classes: dict[str, int] = {}  # class text -> id in order of first appearance
        self.n = 0
        self.names, self.ends = bytearray(), array.array("q")  # file paths: one blob, end offsets

    def add_file(self, name: str) -> int:
        """Record a file path (relative to the root); its file id."""
        self.names += name.encode("utf-8", "surrogateescape")
        self.ends.append(len(self.names))
        return len(self.ends) - 1

    def add(self, part: _Part) -> None:
        if not len(part):
            return
        ids = np.array([self.classes.setdefault(c, len(self.classes)) for c in part.classes] + [-1], np.int32)
        for c in COLUMNS:
            col = ids[part.cols[c]] if c == "label" else part.cols[c]  # local id -1 picks the trailing -1
            self.chunks[c].append(np.ascontiguousarray(col, dtype=DTYPES[c]))
        self.n += len(part)

    def write(self, folder: Path) -> tuple[str, ...]:
        """Write every column to `folder/<name>.npy` (freeing its chunks as it goes); return the sorted class names
        (labels are ids into them, as an index built in one piece would have them)."""
        names = tuple(sorted(self.classes))
        rank = {c: i for i, c in enumerate(names)}
        remap = np.array([rank[c] for c in self.classes] + [-1], np.int32)  # first-seen id -> sorted id
        for c in COLUMNS:
            dtype = np.dtype(DTYPES[c])
            with open(folder / f"{c}.npy", "wb") as fh:
                np.lib.format.write_array_header_1_0(
                    fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (self.n,)})
                for chunk in self.chunks.pop(c):
                    fh.write((remap[chunk] if c == "label" else chunk).tobytes())
                fh.flush()
                os.fsync(fh.fileno())
        np.save(folder / "files_end.npy", np.frombuffer(self.ends, np.int64) if self.ends else np.zeros(0, np.int64))
        with open(folder / "files.bin", "wb") as fh:
            fh.write(self.names)
            fh.flush()
            os.fsync(fh.fileno())
        return names


def _scan_tar(path: Path, file_id: int = 0) -> _Part:
    """The images of one shard, sorted by key. One pass over the member headers (tarfile seeks over the data of
    an uncompressed shard); one small record per key of this shard, released when it returns.

    Keys group members: the first image extension met is the image, `.txt` before `.json` is the caption,
    `.cls` the class text. Bad shards are logged by path and indexed as far as they can be read: an empty file
    has no images; a shard cut short keeps its members up to the cut (the member cut through reads short, so
    it is replaced and counted when read); an unparsable header ends the shard there."""
    size = path.stat().st_size
    if size < tarfile.BLOCKSIZE:
        log.warning("data: %s shard %s (%d bytes): no images", "empty" if size == 0 else "cut short", path, size)
        return _Part({c: np.zeros(0, DTYPES[c]) for c in COLUMNS}, [], b"")
    try:
        tf = tarfile.open(path, "r:")  # byte offsets are only meaningful in an uncompressed tar
    except tarfile.ReadError as exc:
        raise StageError(f"{path}: not an uncompressed tar shard ({exc}); allowed: plain .tar files") from None
    # key -> [image ext, image name, offset, size, txt offset, txt size, json offset, json size, cls offset, cls size]
    groups: dict[str, list] = {}
    with tf:
        last = "the first"
        while True:
            try:
                m = tf.next()
            except tarfile.ReadError as exc:  # "unexpected end of data": the file ends inside the last member
                log.warning("data: shard %s is cut short in member %s (%s): the members before the cut are indexed",
                            path, last, exc)
                break
            if m is None:
                tf.fileobj.seek(tf.offset)
                if tf.fileobj.read(tarfile.BLOCKSIZE).strip(b"\0"):  # not the end-of-archive zeros, not EOF
                    log.warning("data: shard %s has an unreadable header at byte %d after member %s (cut short or "
                                "corrupt): the rest of the shard is skipped", path, tf.offset, last)
                break
            tf.members.clear()  # tarfile would otherwise keep a TarInfo per member
            last = m.name
            key, dot, ext = m.name.rpartition(".")
            if not (m.isfile() and dot):
                continue
            ext = "." + ext.lower()
            g = groups.get(key)
            if g is None:
                g = groups[key] = [None, "", 0, 0, -1, 0, -1, 0, -1, 0]
            if ext in IMG_EXT:
                if g[0] in (None, ext):
                    g[0:4] = ext, m.name, m.offset_data, m.size
            elif ext in (".txt", ".json", ".cls"):
                at = {".txt": 4, ".json": 6, ".cls": 8}[ext]
                g[at:at + 2] = m.offset_data, m.size
        recs = [groups[k] for k in sorted(groups) if groups[k][0] is not None]
        del groups
        classes: dict[str, int] = {}
        label = np.full(len(recs), -1, np.int32)
        for j, r in enumerate(recs):
            if r[8] >= 0:
                tf.fileobj.seek(r[8])
                data = tf.fileobj.read(r[9])
                text = data.decode("utf-8", errors="replace").strip() if len(data) == r[9] else ""
                if text:
                    label[j] = classes.setdefault(text, len(classes))
    n = len(recs)
    txt = np.fromiter((r[4] >= 0 for r in recs), bool, n)
    has_json = np.fromiter((r[6] >= 0 for r in recs), bool, n)
    cap_off = np.where(txt, np.fromiter((r[4] for r in recs), np.int64, n), np.fromiter((r[6] for r in recs), np.int64, n))
    cap_size = np.where(txt, np.fromiter((_fit(r[5]) for r in recs), np.int64, n),
                        np.fromiter((_fit(r[7]) for r in recs), np.int64, n))
    has_cap = txt | has_json
    cols = {"img_file": np.full(n, file_id, np.int32), "img_off": np.fromiter((r[2] for r in recs), np.int64, n),
            "img_size": np.fromiter((_fit(r[3]) for r in recs), np.int32, n),
            "cap_file": np.where(has_cap, file_id, -1).astype(np.int32), "cap_off": np.where(has_cap, cap_off, 0),
            "cap_size": np.where(has_cap, cap_size, 0).astype(np.int32), "cap_json": ~txt & has_json, "label": label}
    manifest = "".join(f"{r[1]}\t{r[3]}\n" for r in recs).encode("utf-8", "surrogateescape")
    return _Part(cols, list(classes), manifest)


def _build_tar(root: Path, shards: list[Path], out: _Columns) -> "hashlib._Hash":
    manifest = hashlib.sha256()
    for p in shards:  # file id i = shard i (`_scan_tar` numbers its members' files so)
        out.add_file(str(p.relative_to(root)))
    with ThreadPoolExecutor(8) as pool:  # network file systems: overlap the header reads; parts come in shard order
        try:
            for part in pool.map(_scan_tar, shards, range(len(shards))):
                manifest.update(part.manifest)
                out.add(part)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a bad shard stops the build now, not after every other shard
            raise
    return manifest


def _build_imagefolder(d: Path, class_dirs: list[Path], out: _Columns) -> "hashlib._Hash":
    """Class folders in order, files by name; an image's caption is the first `.txt`/`.json` with its stem.
    The file names hold one path per image and caption (ImageFolder data has one file per image)."""
    manifest = hashlib.sha256()
    for cls in (p.name for p in class_dirs):
        entries = sorted(os.scandir(d / cls), key=lambda e: e.name)
        by_stem: dict[str, list[str]] = {}
        for e in entries:
            by_stem.setdefault(Path(e.name).stem, []).append(e.name)
        img_file, img_size, cap_file, cap_size, cap_json = [], [], [], [], []
        for e in entries:
            if Path(e.name).suffix.lower() not in IMG_EXT or not e.is_file():
                continue
            size = e.stat().st_size
            manifest.update(f"{e.name}\t{size}\n".encode("utf-8", "surrogateescape"))
            cap = next((n for n in sorted(by_stem[Path(e.name).stem]) if Path(n).suffix.lower() in CAP_EXT), None)
            img_file.append(out.add_file(f"{cls}/{e.name}"))
            img_size.append(_fit(size))
            cap_file.append(out.add_file(f"{cls}/{cap}") if cap else -1)
            cap_size.append(_fit((d / cls / cap).stat().st_size) if cap else 0)
            cap_json.append(bool(cap) and cap.lower().endswith(".json"))
        n = len(img_file)
        out.add(_Part({"img_file": np.array(img_file), "img_off": np.zeros(n, np.int64), "img_size": np.array(img_size),
                       "cap_file": np.array(cap_file), "cap_off": np.zeros(n, np.int64), "cap_size": np.array(cap_size),
                       "cap_json": np.array(cap_json, bool), "label": np.zeros(n, np.int32)}, [cls], b""))
    return manifest


def _cache_root() -> Path:
    return Path(os.environ.get("VTP_CACHE", Path.home() / ".cache" / "vtp-scaling")) / "data-index"


def _build_once(cache: Path, build) -> None:
    """Make `cache` exist, built by `build(folder)` in exactly one process.

    The first process to take an exclusive `flock` on `<cache>.lock` builds into a temp folder beside `cache`
    and renames it into place (so `cache` only ever names a finished index); the others block on the lock and
    then find it built. A builder that dies releases the lock with its file descriptor, and the next process
    removes its temp folder and builds again. `flock` spans the nodes of a cluster on Linux NFS (emulated with
    POSIX locks), Lustre (mounted with `flock`) and GPFS."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / f"{cache.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("data: another process is building the index %s; waiting for it", cache)
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when `lock` is closed, or its process dies
        if (cache / "meta.json").is_file():
            return
        for stale in cache.parent.glob(f".{cache.name}.*"):  # a dead builder's leftovers (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        if cache.exists():
            shutil.rmtree(cache)  # no meta.json: not a finished index
        tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=f".{cache.name}."))
        try:
            build(tmp)
            os.rename(tmp, cache)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _build(folder: Path, d: Path, sources: list[Path], dataset: str) -> None:
    t0 = time.perf_counter()
    cols = _Columns()
    manifest = (_build_tar if dataset == "tar" else _build_imagefolder)(d, sources, cols)
    n, n_files = cols.n, len(cols.ends)
    names = cols.write(folder)
    atomic_write_text(folder / "meta.json", json.dumps(  # written last: the folder is a complete index
        {"version": INDEX_VERSION, "root": str(d), "n_files": n_files, "class_names": list(names),
         "manifest_sha256": manifest.hexdigest(), "n": n}))
    log.info("data: indexed %d images in %d %s under %s in %.1f s", n, len(sources),
             "shards" if dataset == "tar" else "class folders", d, time.perf_counter() - t0)


def load_index(path: str, dataset: str, split: str) -> DataIndex:
    """The index of `<path>/<split>` (built and cached on first use by one process while any others wait;
    rebuilt when the listing changes). Its columns are memory-mapped read-only."""
    d, sources = _sources(path, dataset, split)
    d = d.resolve()
    sources = [p.resolve() for p in sources]
    key = hashlib.sha256(json.dumps([INDEX_VERSION, dataset, str(d), _listing(sources, dataset)]).encode()).hexdigest()[:20]
    cache = _cache_root() / key
    if not (cache / "meta.json").is_file():
        _build_once(cache, lambda folder: _build(folder, d, sources, dataset))
    meta = json.loads((cache / "meta.json").read_text())
    cols = {name: np.load(cache / f"{name}.npy", mmap_mode="r") for name in COLUMNS}
    return DataIndex(Path(meta["root"]), Names.load(cache), tuple(meta["class_names"]), meta["manifest_sha256"], cols)


def dataset_manifest(path: str, dataset: str) -> str:
    """The identity of a whole dataset, `DataConfig.checksum`: for a shard pattern, its (train) manifest
    sha256; for a folder, the sha256 of its splits' manifests ("train:<sha>" and "test:<sha>" lines, for the
    splits it has). Builds or reads the cached indexes; a missing path raises StageError."""
    if dataset == "tar" and "{" in path:
        return load_index(path, dataset, "train").manifest_sha256
    lines = []
    for split in ("train", "test"):
        try:
            lines.append(f"{split}:{load_index(path, dataset, split).manifest_sha256}")
        except StageError:
            continue  # that split is not there
    if not lines:
        split_dir(path, dataset, "train")  # raises the one-line "no train folder" error
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# ---------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    """`python -m vtp_core.data.index --dataset tar --path '/d/{00000..00099}.tar'` builds (or reads) the
    index and prints what a study needs: image count, classes and the manifest sha256 for
    `data.checksum`. `--decode` also decodes every image (a pre-scan) and writes the unreadable ones to
    `--bad-list` (one path per line)."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m vtp_core.data.index", description=main.__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("tar", "imagefolder"), required=True)
    ap.add_argument("--path", required=True, help="folder with train/ and val/, or a tar shard pattern")
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--decode", action="store_true", help="decode every image and list the unreadable ones")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--bad-list", default="unreadable.txt")
    args = ap.parse_args(argv)
    try:
        index = load_index(args.path, args.dataset, args.split)
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_cap = int((np.asarray(index.cap_file) >= 0).sum())
    print(f"{len(index)} images under {index.root} ({n_cap} with captions, {len(index.class_names)} classes)")
    print(f"{args.split} split manifest sha256: {index.manifest_sha256}")
    print(f"data.checksum: {dataset_manifest(args.path, args.dataset)}  (the whole dataset: pin it in the study)")
    if args.decode:
        from tqdm.auto import tqdm

        from vtp_core.data.folders import decode_many

        bad = []
        for start in tqdm(range(0, len(index), 256), desc="decode", unit_scale=256):
            ids = range(start, min(len(index), start + 256))
            bad += [index.source(i) for i, r in zip(ids, decode_many(index, ids, args.image_size)) if isinstance(r, Exception)]
        atomic_write_text(Path(args.bad_list), "".join(f"{b}\n" for b in bad))
        print(f"{len(bad)} unreadable ({len(bad) / max(1, len(index)):.3%}); listed in {args.bad_list}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
