"""Images, captions and views for the tokenizer: datasets, the one pixel convention, multi-crop, masks.

Pixel convention (everywhere in the suite): uint8 NHWC on disk and for feature extractors; float NCHW
in [-1, 1] for models (`normalize`), back with `to_uint8` (the only float->uint8 conversion).
"""
from vtp_core.data.pixels import denormalize, normalize, to_uint8
from vtp_core.data.captions import CLASS_NAMES, TEMPLATES, caption
from vtp_core.data.datasets import (class_names, load_captions, load_images, load_split, load_train,
                                    load_train_captions, subset_indices, take)

__all__ = ["normalize", "denormalize", "to_uint8", "CLASS_NAMES", "TEMPLATES", "caption", "class_names",
           "load_split", "load_images", "load_captions", "load_train", "load_train_captions", "subset_indices", "take"]
