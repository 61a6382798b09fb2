"""Files shipped inside the open-clip-torch wheel, loaded without importing `open_clip` (whose import
pulls timm and torchvision): the CLIP BPE vocabulary and tokenizer, ImageNet zero-shot metadata."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType

from vtp_core.runtime import StageError


def open_clip_file(name: str, what: str) -> Path:
    """Path of `open_clip/<name>`; a clear error naming `what` it is for when the wheel is missing."""
    spec = importlib.util.find_spec("open_clip")
    root = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if root is None or not (root / name).is_file():
        raise StageError(f"open_clip/{name} not found ({what}); install it with `pip install --no-deps open-clip-torch`")
    return root / name


@functools.lru_cache(maxsize=None)
def open_clip_module(name: str, what: str) -> ModuleType:
    """Execute the standalone module `open_clip/<name>` on its own (it must import nothing from open_clip)."""
    path = open_clip_file(name, what)
    spec = importlib.util.spec_from_file_location(f"_vtp_open_clip_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
