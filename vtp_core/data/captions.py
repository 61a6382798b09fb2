"""Class-template captions for labelled datasets (CLIP training and zero-shot).

Fashion-MNIST has no captions, so text is "a photo of a {class}" style templates (OpenAI CLIP
prompt engineering); training draws a template per image, zero-shot averages over all of them.
"""
from __future__ import annotations

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
