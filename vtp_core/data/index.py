"""A byte-range index of user data (ImageFolder trees or webdataset-style tar shards), built once.

Why: DataComp/LAION-scale tar data cannot be decoded into memory, and re-scanning 27k shards every
stage would cost hours. The index records, per image, where its bytes (and its caption's bytes) lie:
(file, offset, size). Any image can then be read with one `pread`, in any order, which keeps training
batches a pure function of (seed, step) with no loader state. Only headers are read to build it.

Cached under `$VTP_CACHE/data-index/<key>/` (key: dataset kind, split folder, and its listing: shard
names, sizes and mtimes, or class folders and their mtimes), as .npy files that later processes
memory-map (eight ranks on a node share one copy in the page cache) plus meta.json (files, class
names, manifest sha256 — the same manifest `DataConfig.checksum` is checked against).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtp_core.runtime import StageError, atomic_write_bytes, atomic_write_text

IMG_EXT = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CAP_EXT = (".txt", ".json")
COLUMNS = ("img_file", "img_off", "img_size", "cap_file", "cap_off", "cap_size", "cap_json", "label")
INDEX_VERSION = 1


@dataclass
class DataIndex:
    """Per-image byte ranges; `cap_file` is -1 where an image has no caption file, `label` -1 where
    its class is unknown. `files` are paths relative to `root`."""

    root: Path
    files: list[str]
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
        fd = os.open(self.root / self.files[file_id], os.O_RDONLY)
        try:
            return os.pread(fd, int(size), int(offset))
        finally:
            os.close(fd)

    def image_bytes(self, i: int) -> bytes:
        return self.read(self.img_file[i], self.img_off[i], self.img_size[i])

    def caption(self, i: int) -> str | None:
        if self.cap_file[i] < 0:
            return None
        return caption_from(self.read(self.cap_file[i], self.cap_off[i], self.cap_size[i]), bool(self.cap_json[i]))

    def source(self, i: int) -> str:
        """A human-readable name of image i for logs: its path, or shard:member for tar data."""
        path = self.root / self.files[self.img_file[i]]
        if path.suffix.lower() != ".tar" or self.img_off[i] < 512:
            return str(path)
        try:  # the member's header block sits right before its data (no long-name extension here)
            name = tarfile.TarInfo.frombuf(self.read(self.img_file[i], self.img_off[i] - 512, 512),
                                           tarfile.ENCODING, "surrogateescape").name
        except tarfile.TarError:
            name = f"@{int(self.img_off[i])}"
        return f"{path}:{name}"


def caption_from(data: bytes, is_json: bool) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if is_json:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        text = (obj.get("caption") or obj.get("text") or "") if isinstance(obj, dict) else ""
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


def _scan_tar(path: Path) -> list[tuple]:
    """(key, image member, caption member or None, class text) per image of one shard, sorted by key."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        tf = tarfile.open(path, "r:")  # byte offsets are only meaningful in an uncompressed tar
    except tarfile.ReadError as exc:
        raise StageError(f"{path}: not an uncompressed tar shard ({exc}); allowed: plain .tar files") from None
    with tf:
        for m in tf:  # headers only: tarfile seeks over the data of uncompressed shards
            if m.isfile():
                key, dot, ext = m.name.rpartition(".")
                if dot:
                    groups.setdefault(key, {})["." + ext.lower()] = m
        rows = []
        for key in sorted(groups):
            g = groups[key]
            img = next((m for e, m in g.items() if e in IMG_EXT), None)
            if img is None:
                continue
            cap = next((g[e] for e in CAP_EXT if e in g), None)
            cls = tf.extractfile(g[".cls"]).read().decode().strip() if ".cls" in g else ""
            rows.append((img, cap, cls))
    return rows


def _build_tar(root: Path, shards: list[Path]) -> tuple[list[str], list[tuple], hashlib._Hash]:
    with ThreadPoolExecutor(8) as pool:  # network file systems: overlap the header reads
        scanned = list(pool.map(_scan_tar, shards))
    names = [str(p.relative_to(root)) for p in shards]
    rows, manifest = [], hashlib.sha256()
    for f, shard_rows in enumerate(scanned):
        for img, cap, cls in shard_rows:
            manifest.update(f"{img.name}\t{img.size}\n".encode())
            rows.append((f, img.offset_data, img.size, f if cap else -1, cap.offset_data if cap else 0,
                         cap.size if cap else 0, bool(cap and cap.name.lower().endswith(".json")), cls))
    return names, rows, manifest


def _build_imagefolder(d: Path, class_dirs: list[Path]) -> tuple[list[str], list[tuple], hashlib._Hash]:
    files: list[str] = []
    rows, manifest = [], hashlib.sha256()
    for cls in (p.name for p in class_dirs):
        entries = sorted(os.scandir(d / cls), key=lambda e: e.name)
        by_stem: dict[str, list[str]] = {}
        for e in entries:
            by_stem.setdefault(Path(e.name).stem, []).append(e.name)
        for e in entries:
            if Path(e.name).suffix.lower() not in IMG_EXT or not e.is_file():
                continue
            size = e.stat().st_size
            manifest.update(f"{e.name}\t{size}\n".encode())
            cap = next((n for n in sorted(by_stem[Path(e.name).stem]) if Path(n).suffix.lower() in CAP_EXT), None)
            files.append(f"{cls}/{e.name}")
            row = [len(files) - 1, 0, size, -1, 0, 0, False, cls]
            if cap:
                files.append(f"{cls}/{cap}")
                row[3:7] = [len(files) - 1, 0, (d / cls / cap).stat().st_size, cap.lower().endswith(".json")]
            rows.append(tuple(row))
    return files, rows, manifest


def _cache_root() -> Path:
    return Path(os.environ.get("VTP_CACHE", Path.home() / ".cache" / "vtp-scaling")) / "data-index"


def load_index(path: str, dataset: str, split: str) -> DataIndex:
    """The index of `<path>/<split>` (built and cached on first use; rebuilt when the listing changes)."""
    d, sources = _sources(path, dataset, split)
    d = d.resolve()
    sources = [p.resolve() for p in sources]
    key = hashlib.sha256(json.dumps([INDEX_VERSION, dataset, str(d), _listing(sources, dataset)]).encode()).hexdigest()[:20]
    cache = _cache_root() / key
    if not (cache / "meta.json").is_file():
        files, rows, manifest = (_build_tar if dataset == "tar" else _build_imagefolder)(d, sources)
        names = tuple(sorted({r[-1] for r in rows if r[-1]}))
        label = {c: i for i, c in enumerate(names)}
        cols = {
            "img_file": np.array([r[0] for r in rows], dtype=np.int32),
            "img_off": np.array([r[1] for r in rows], dtype=np.int64),
            "img_size": np.array([r[2] for r in rows], dtype=np.int64),
            "cap_file": np.array([r[3] for r in rows], dtype=np.int32),
            "cap_off": np.array([r[4] for r in rows], dtype=np.int64),
            "cap_size": np.array([r[5] for r in rows], dtype=np.int64),
            "cap_json": np.array([r[6] for r in rows], dtype=bool),
            "label": np.array([label[r[7]] if r[7] else -1 for r in rows], dtype=np.int32),
        }
        for name, arr in cols.items():
            buf = io.BytesIO()
            np.save(buf, arr)
            atomic_write_bytes(cache / f"{name}.npy", buf.getvalue())
        atomic_write_text(cache / "meta.json", json.dumps(  # written last: the index is complete
            {"root": str(d), "files": files, "class_names": list(names), "manifest_sha256": manifest.hexdigest()}))
    meta = json.loads((cache / "meta.json").read_text())
    cols = {name: np.load(cache / f"{name}.npy", mmap_mode="r") for name in COLUMNS}
    return DataIndex(Path(meta["root"]), meta["files"], tuple(meta["class_names"]), meta["manifest_sha256"], cols)


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
