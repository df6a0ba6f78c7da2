"""Datasets: the datalist convention, image / mask reading, input checks, converters and synthetic data.

``datalist`` and ``io`` are imported eagerly; the validator, the converters and the synthetic
generator are imported on first use, so that ``python -m monai_pixelcam.data.<module>`` does not find
its own module already imported by the package.
"""

from __future__ import annotations

import importlib

from .datalist import SPLITS, DatalistError, datalist_mpp, load_datalist, make_splits, save_datalist
from .io import (
    LoadHistologyd,
    LoadHistologyD,
    LoadHistologyDict,
    LoadHistologyImage,
    LoadHistologyMask,
    read_mask,
    read_rgb,
)
from .seeded import ItemSeededDataset, ItemSeedSampler, item_seed

_LAZY = {
    "validate_datalist": "validate",
    "mask_problem": "validate",
    "convert_glas": "glas",
    "convert_camelyon": "camelyon",
    "synthesize": "synthetic",
    "prepare_datalist": "prepare",
    "PreparedDatalist": "prepare",
    "check_class_names": "prepare",
}

__all__ = [
    "SPLITS",
    "DatalistError",
    "make_splits",
    "save_datalist",
    "load_datalist",
    "datalist_mpp",
    "read_rgb",
    "read_mask",
    "LoadHistologyImage",
    "LoadHistologyMask",
    "LoadHistologyd",
    "LoadHistologyD",
    "LoadHistologyDict",
    "ItemSeededDataset",
    "ItemSeedSampler",
    "item_seed",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
