"""Class-template captions for labelled datasets (CLIP training and zero-shot).

Fashion-MNIST has no captions, so text is "a photo of a {class}" style templates (OpenAI CLIP
prompt engineering); training draws a template per image, zero-shot averages over all of them.
ImageNet (1000 WordNet-id folders) gets OpenCLIP's class names and the 80 OpenAI templates, the
VTP zero-shot protocol (docs/protocol.md#zero-shot), read from the open-clip-torch wheel without importing it.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Callable

from vtp_core.openclip_files import open_clip_module
from vtp_core.runtime import StageError

CLASS_NAMES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                "Sneaker", "Bag", "Ankle boot")

TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a grayscale photo of a {}.",
    "a picture of a {}.",
    "a product photo of a {}.",
    "a small photo of a {}.",
)


def caption(label: int, template: int = 0, class_names: tuple[str, ...] = CLASS_NAMES) -> str:
    return TEMPLATES[template % len(TEMPLATES)].format(class_names[label].lower())


@functools.lru_cache(maxsize=1)
def _openclip_metadata():
    mod = open_clip_module("zero_shot_metadata.py", "ImageNet class names and templates")  # tuples, no imports
    return tuple(mod.IMAGENET_CLASSNAMES), tuple(mod.OPENAI_IMAGENET_TEMPLATES)


def readable_class_names(folder_names: tuple[str, ...], root: Path | None = None) -> tuple[str, ...]:
    """Names for prompts: `<root>/classnames.txt` (one per line, in sorted-folder order) if present;
    OpenCLIP's names for the 1000 ImageNet WordNet-id folders; else the folder names themselves."""
    listing = root / "classnames.txt" if root is not None else None
    if listing is not None and listing.is_file():
        names = tuple(ln.strip() for ln in listing.read_text().splitlines() if ln.strip())
        if len(names) != len(folder_names):
            raise StageError(f"{listing}: {len(names)} names for {len(folder_names)} class folders; "
                             f"one name per line, in sorted folder order")
        return names
    if len(folder_names) == 1000 and all(re.fullmatch(r"n\d{8}", n) for n in folder_names):
        return _openclip_metadata()[0]
    return folder_names


def zero_shot_prompts(names: tuple[str, ...]) -> tuple[Callable[[str], str], ...]:
    """Prompt functions averaged per class: the 80 OpenAI templates for ImageNet, else TEMPLATES."""
    if len(names) == 1000 and names == _openclip_metadata()[0]:
        return _openclip_metadata()[1]
    return tuple(functools.partial(lambda t, c: t.format(c.lower()), t) for t in TEMPLATES)
