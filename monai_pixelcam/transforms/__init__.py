"""MONAI transforms for H&E histology: stain and colour augmentation (array and dictionary versions) and
the training / evaluation chains.

Modules: ``colour`` (colour-space functions), ``stain`` (stain estimation), ``array`` / ``dictionary`` (the
transform classes), ``pipelines`` (the chains)."""

from .array import AntialiasedResize, MacenkoNormalize, NetworkInput, RandColorJitter, RandHEDJitter, RandStainAugment
from .colour import (
    HED_FROM_RGB,
    RGB_FROM_HED,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    hed_to_rgb,
    hsv_to_rgb,
    optical_density,
    rgb_to_hed,
    rgb_to_hsv,
)
from .stain import macenko_stain_matrix
from .dictionary import (
    AntialiasedResizeD,
    AntialiasedResized,
    AntialiasedResizeDict,
    MacenkoNormalizeD,
    MacenkoNormalized,
    MacenkoNormalizeDict,
    NetworkInputD,
    NetworkInputd,
    NetworkInputDict,
    RandColorJitterD,
    RandColorJitterd,
    RandColorJitterDict,
    RandHEDJitterD,
    RandHEDJitterd,
    RandHEDJitterDict,
    RandStainAugmentD,
    RandStainAugmentd,
    RandStainAugmentDict,
)
from .pipelines import eval_transforms, train_transforms

__all__ = [
    "HED_FROM_RGB",
    "AntialiasedResize",
    "RGB_FROM_HED",
    "MacenkoNormalize",
    "NetworkInput",
    "NetworkInputd",
    "NetworkInputD",
    "NetworkInputDict",
    "RandColorJitter",
    "RandHEDJitter",
    "RandStainAugment",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "hed_to_rgb",
    "hsv_to_rgb",
    "macenko_stain_matrix",
    "optical_density",
    "rgb_to_hed",
    "rgb_to_hsv",
    "AntialiasedResizeD",
    "AntialiasedResized",
    "AntialiasedResizeDict",
    "MacenkoNormalizeD",
    "MacenkoNormalized",
    "MacenkoNormalizeDict",
    "RandColorJitterD",
    "RandColorJitterd",
    "RandColorJitterDict",
    "RandHEDJitterD",
    "RandHEDJitterd",
    "RandHEDJitterDict",
    "RandStainAugmentD",
    "RandStainAugmentd",
    "RandStainAugmentDict",
    "eval_transforms",
    "train_transforms",
]
