"""Dictionary-based wrappers of the transforms in :py:mod:`monai_pixelcam.transforms.array`.

Class names end with 'd' (aliases 'D' and 'Dict'), as in MONAI. The random ones draw once per call and
apply that one draw to every listed key (typically only ``"image"``: masks and CAMs must not be
recoloured).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import Resize
from monai.transforms.transform import MapTransform, RandomizableTransform
from monai.utils.type_conversion import convert_to_tensor

from .array import (
    AntialiasedResize,
    MacenkoNormalize,
    NetworkInput,
    RandColorJitter,
    RandHEDJitter,
    RandStainAugment,
)

__all__ = [
    "RandHEDJitterd",
    "RandHEDJitterD",
    "RandHEDJitterDict",
    "RandStainAugmentd",
    "RandStainAugmentD",
    "RandStainAugmentDict",
    "RandColorJitterd",
    "RandColorJitterD",
    "RandColorJitterDict",
    "MacenkoNormalized",
    "MacenkoNormalizeD",
    "MacenkoNormalizeDict",
    "AntialiasedResized",
    "AntialiasedResizeD",
    "AntialiasedResizeDict",
    "NetworkInputd",
    "NetworkInputD",
    "NetworkInputDict",
]


class _RandSharedDrawd(RandomizableTransform, MapTransform):
    """One draw of the wrapped array transform (held in ``self.transform`` with ``prob=1``) per call,
    applied to all keys; ``prob`` is decided here."""

    transform: RandHEDJitter | RandStainAugment | RandColorJitter

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.transform.randomize(None)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key], randomize=False)
        return d


class RandHEDJitterd(_RandSharedDrawd):
    """Dictionary-based version of :py:class:`monai_pixelcam.transforms.RandHEDJitter`.

    Args:
        keys: keys of the ``3 x H x W`` RGB images to jitter (one draw for all of them).
        prob, sigma, bias, max_value: see :py:class:`~monai_pixelcam.transforms.RandHEDJitter`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandHEDJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        sigma: float = 0.05,
        bias: float = 0.05,
        max_value: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = RandHEDJitter(prob=1.0, sigma=sigma, bias=bias, max_value=max_value)


class RandStainAugmentd(_RandSharedDrawd):
    """Dictionary-based version of :py:class:`monai_pixelcam.transforms.RandStainAugment`.

    The perturbation is drawn once per call; each key's stain basis is estimated from its own image.

    Args:
        keys: keys of the ``3 x H x W`` RGB images to augment (one draw for all of them).
        prob, stain_sigma, sigma, bias, od_threshold, percentile, min_tissue_fraction, min_stain_angle,
            max_value: see :py:class:`~monai_pixelcam.transforms.RandStainAugment`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandStainAugment.backend

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        stain_sigma: float = 0.05,
        sigma: float = 0.2,
        bias: float = 0.05,
        od_threshold: float = 0.15,
        percentile: float = 1.0,
        min_tissue_fraction: float = 0.01,
        min_stain_angle: float = 0.05,
        max_value: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = RandStainAugment(
            prob=1.0,
            stain_sigma=stain_sigma,
            sigma=sigma,
            bias=bias,
            od_threshold=od_threshold,
            percentile=percentile,
            min_tissue_fraction=min_tissue_fraction,
            min_stain_angle=min_stain_angle,
            max_value=max_value,
        )


class RandColorJitterd(_RandSharedDrawd):
    """Dictionary-based version of :py:class:`monai_pixelcam.transforms.RandColorJitter`.

    Args:
        keys: keys of the ``3 x H x W`` RGB images to jitter (one draw for all of them).
        brightness, contrast, saturation, hue, prob, max_value: see
            :py:class:`~monai_pixelcam.transforms.RandColorJitter`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = RandColorJitter.backend

    def __init__(
        self,
        keys: KeysCollection,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
        prob: float = 1.0,
        max_value: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.transform = RandColorJitter(
            brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, prob=1.0, max_value=max_value
        )


class MacenkoNormalized(MapTransform):
    """Dictionary-based version of :py:class:`monai_pixelcam.transforms.MacenkoNormalize` (the
    channel-first adapter of MONAI's ``NormalizeHEStains``).

    Args:
        keys: keys of the ``3 x H x W`` RGB images to normalise.
        tli, alpha, beta, target_he, max_cref, max_value: see
            :py:class:`~monai_pixelcam.transforms.MacenkoNormalize`.
        allow_missing_keys: don't raise exception if key is missing.
    """

    backend = MacenkoNormalize.backend

    def __init__(
        self,
        keys: KeysCollection,
        tli: float = 240,
        alpha: float = 1,
        beta: float = 0.15,
        target_he: tuple | np.ndarray = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
        max_cref: tuple | np.ndarray = (1.9705, 1.0308),
        max_value: float | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = MacenkoNormalize(
            tli=tli, alpha=alpha, beta=beta, target_he=target_he, max_cref=max_cref, max_value=max_value
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


RandHEDJitterD = RandHEDJitterDict = RandHEDJitterd
RandStainAugmentD = RandStainAugmentDict = RandStainAugmentd
RandColorJitterD = RandColorJitterDict = RandColorJitterd
MacenkoNormalizeD = MacenkoNormalizeDict = MacenkoNormalized


class AntialiasedResized(MapTransform):
    """Dictionary version of :class:`~monai_pixelcam.transforms.array.AntialiasedResize`."""

    backend = AntialiasedResize.backend

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int] | int, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.resize = AntialiasedResize(spatial_size)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.resize(d[key])
        return d


AntialiasedResizeD = AntialiasedResizeDict = AntialiasedResized


class NetworkInputd(MapTransform):
    """Dictionary version of :class:`~monai_pixelcam.transforms.array.NetworkInput` that keeps an item's maps on
    the image's grid: every chain of the bundle (training before its random crop, validation, evaluation, CAM
    storage) and :func:`~monai_pixelcam.transforms.eval_transforms` use it.

    Args:
        keys: keys of the ``3 x H x W`` RGB images, float in [0, 1] -> ``3 x S x S`` network inputs.
        spatial_size, stain_normalize: as :class:`~monai_pixelcam.transforms.array.NetworkInput`.
        cam_keys: keys of soft maps (``1 x h x w`` in [0, 1], any ``h x w``, e.g. a stored CAM at feature
            resolution), resized with the image's filter straight to ``S x S``; skipped when absent.
        mask_keys: keys of label masks (``1 x H x W``), resized nearest to ``S x S``; skipped when absent or None.
        allow_missing_keys: don't raise an exception when an image key is missing.
    """

    backend = NetworkInput.backend

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int,
        stain_normalize: bool = False,
        cam_keys: KeysCollection = ("cam",),
        mask_keys: KeysCollection = ("mask",),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.network_input = NetworkInput(spatial_size, stain_normalize)
        self.cam_keys = [cam_keys] if isinstance(cam_keys, str) else list(cam_keys)
        self.mask_keys = [mask_keys] if isinstance(mask_keys, str) else list(mask_keys)
        self.resize_mask = Resize((spatial_size, spatial_size), mode="nearest")

    def settings(self) -> dict:
        """:meth:`NetworkInput.settings <monai_pixelcam.transforms.array.NetworkInput.settings>`."""
        return self.network_input.settings()

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.network_input(d[key])
        for key in self.cam_keys:
            if d.get(key) is not None:
                d[key] = self.network_input.resize(d[key])
        for key in self.mask_keys:
            if d.get(key) is not None:
                d[key] = self.resize_mask(d[key])
        return d


NetworkInputD = NetworkInputDict = NetworkInputd
