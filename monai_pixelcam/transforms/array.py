"""Stain and colour transforms for H&E histology tiles (array versions).

Value conventions (``3 x H x W`` RGB, float [0, 1] or uint8, optical density, HED units) are those of
:mod:`monai_pixelcam.transforms.colour`; stain estimation lives in :mod:`monai_pixelcam.transforms.stain`.

Random transforms keep the draw (``randomize``) apart from its application, as MONAI's do, so that a
dictionary transform can apply one draw to several keys.

Stain *normalisation* is MONAI's :class:`monai.apps.pathology.transforms.NormalizeHEStains` (Macenko),
which wants a ``uint8 H x W x 3`` numpy array; :class:`MacenkoNormalize` adapts it to the channel-first
tensors used here.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.apps.pathology.transforms import NormalizeHEStains
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import RandomizableTransform, Transform
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

from .colour import (
    OD_EPS,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    from_unit,
    hed_to_rgb,
    optical_density,
    rgb_to_hed,
    to_unit,
)
from .stain import (
    OrderedExtractHEStains,
    complete_basis,
    macenko_stain_matrix,
    monai_extracts_eosin_first,
    ruifrok_basis,
)

__all__ = [
    "RandHEDJitter",
    "RandStainAugment",
    "RandColorJitter",
    "MacenkoNormalize",
    "AntialiasedResize",
    "NetworkInput",
]


def _check_range(value: float, name: str, upper: float | None = None) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        bound = f"in [0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


class _RandColourTransform(RandomizableTransform):
    """Call protocol shared by the colour and stain jitters: tensor in, one draw (or the last one), work in
    [0, 1] float, same dtype and range out. Subclasses set ``_draw_attrs`` (filled by ``randomize``) and
    ``_apply`` (the jitter on a ``3 x H x W`` float image in [0, 1])."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    _draw_attrs: tuple[str, ...] = ()
    max_value: float | None = None

    @abstractmethod
    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """The jitter with the current draw: ``3 x H x W`` float in [0, 1] -> same shape (clipped later)."""

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """
        Args:
            img: ``3 x H x W`` RGB image.
            randomize: draw new factors first; False reuses the last draw (dictionary transforms).
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        if any(getattr(self, name) is None for name in self._draw_attrs):
            raise RuntimeError("please call the `randomize()` function first.")
        x, scale = to_unit(img, self.max_value)
        return from_unit(self._apply(x), img, scale)


class RandHEDJitter(_RandColourTransform):
    """Random HED stain jitter (Tellez et al., 2018, "Whole-slide mitosis detection in H&E breast
    histology using PHH3 as a reference to train distilled stain-invariant convolutional networks").

    The image is unmixed into Ruifrok-Johnston H, E and DAB concentrations (:func:`rgb_to_hed`), each
    channel ``i`` becomes ``alpha_i * c_i + beta_i`` with ``alpha_i ~ U(1 - sigma, 1 + sigma)`` and
    ``beta_i ~ U(-bias, bias)``, and the result is converted back to RGB and clipped. Concentrations are
    in scikit-image's units, so Tellez's "HED-light" is ``sigma = bias = 0.05`` and "HED-strong"
    ``sigma = bias = 0.2``. A shift moves white background as well (it tints the glass), as in the paper.

    Args:
        prob: probability of applying the jitter.
        sigma: range ``s`` of the multiplicative factor, in [0, 1).
        bias: range ``b`` of the additive shift (HED concentration units), >= 0.
        max_value: value of full intensity; None: 1 for float input, 255 for uint8 (dtype maximum).

    Input ``3 x H x W`` RGB (float [0, 1] or uint8 [0, 255]); output of the same shape, dtype and range.
    """

    _draw_attrs = ("alpha", "beta")

    def __init__(self, prob: float = 1.0, sigma: float = 0.05, bias: float = 0.05, max_value: float | None = None):
        RandomizableTransform.__init__(self, prob)
        self.sigma = _check_range(sigma, "sigma", 1.0)
        self.bias = _check_range(bias, "bias")
        self.max_value = max_value
        self.alpha: np.ndarray | None = None
        self.beta: np.ndarray | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return None
        self.alpha = self.R.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=3)
        self.beta = self.R.uniform(-self.bias, self.bias, size=3)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.as_tensor(self.alpha, dtype=x.dtype).view(3, 1, 1)
        beta = torch.as_tensor(self.beta, dtype=x.dtype).view(3, 1, 1)
        return hed_to_rgb(rgb_to_hed(x) * alpha + beta)


class RandStainAugment(_RandColourTransform):
    """Random stain augmentation in the image's own stain basis (Macenko et al., 2009).

    Each image's H and E stain vectors are estimated with Macenko's method
    (:func:`macenko_stain_matrix`), completed by a third, residual direction (their cross product) to an
    invertible basis, and the image is unmixed into concentrations exactly (no least-squares loss). The
    draw then

    * perturbs the two unit stain vectors: ``v' = normalise(v + n)``, ``n ~ N(0, stain_sigma^2 I)``
      (for small ``stain_sigma`` a rotation of about ``stain_sigma`` radians),
    * scales and shifts the H and E concentrations: ``c' = alpha * c + beta``,
      ``alpha ~ U(1 - sigma, 1 + sigma)``, ``beta ~ U(-bias, bias)`` (natural OD units),

    and remixes with the residual untouched, so zero strength gives the input back. An image with too
    little tissue for Macenko (blank glass, a uniform or single-stain tile) falls back to the
    Ruifrok-Johnston H, E, DAB basis; the transform never fails on such tiles.

    Args:
        prob: probability of applying the augmentation.
        stain_sigma: standard deviation of the noise added to each unit stain vector, >= 0.
        sigma: range of the concentration scale factor, in [0, 1).
        bias: range of the concentration shift (natural OD), >= 0; a shift also tints the background.
        od_threshold, percentile, min_tissue_fraction, min_stain_angle: Macenko estimation, see
            :func:`macenko_stain_matrix`.
        max_value: value of full intensity; None: 1 for float input, 255 for uint8 (dtype maximum).

    Input ``3 x H x W`` RGB (float [0, 1] or uint8 [0, 255]); output of the same shape, dtype and range.
    """

    _draw_attrs = ("stain_noise", "alpha", "beta")

    def __init__(
        self,
        prob: float = 1.0,
        stain_sigma: float = 0.05,
        sigma: float = 0.2,
        bias: float = 0.05,
        od_threshold: float = 0.15,
        percentile: float = 1.0,
        min_tissue_fraction: float = 0.01,
        min_stain_angle: float = 0.05,
        max_value: float | None = None,
    ):
        RandomizableTransform.__init__(self, prob)
        self.stain_sigma = _check_range(stain_sigma, "stain_sigma")
        self.sigma = _check_range(sigma, "sigma", 1.0)
        self.bias = _check_range(bias, "bias")
        self.od_threshold = od_threshold
        self.percentile = percentile
        self.min_tissue_fraction = min_tissue_fraction
        self.min_stain_angle = min_stain_angle
        self.max_value = max_value
        self.stain_noise: np.ndarray | None = None
        self.alpha: np.ndarray | None = None
        self.beta: np.ndarray | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return None
        self.stain_noise = self.R.normal(0.0, 1.0, size=(3, 2)) * self.stain_sigma
        self.alpha = self.R.uniform(1.0 - self.sigma, 1.0 + self.sigma, size=2)
        self.beta = self.R.uniform(-self.bias, self.bias, size=2)

    def stain_basis(self, od: torch.Tensor) -> torch.Tensor:
        """``3 x 3`` basis (columns H, E, residual) of an OD image ``3 x H x W``: Macenko, else Ruifrok."""
        he = macenko_stain_matrix(
            od,
            od_threshold=self.od_threshold,
            percentile=self.percentile,
            min_tissue_fraction=self.min_tissue_fraction,
            min_stain_angle=self.min_stain_angle,
        )
        return ruifrok_basis(od.dtype, od.device) if he is None else complete_basis(he)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(f"RandStainAugment takes one 3 x H x W image, got shape {tuple(x.shape)}")
        od = optical_density(x)
        basis = self.stain_basis(od)
        conc = torch.linalg.solve(basis, od.reshape(3, -1))  # 3 x N, rows H, E, residual
        noise = torch.as_tensor(self.stain_noise, dtype=x.dtype)
        stains = basis[:, :2] + noise
        stains = stains / stains.norm(dim=0, keepdim=True).clamp(min=OD_EPS)
        basis = torch.cat((stains, basis[:, 2:]), dim=1)
        alpha = torch.as_tensor(self.alpha, dtype=x.dtype)[:, None]
        beta = torch.as_tensor(self.beta, dtype=x.dtype)[:, None]
        conc = torch.cat((conc[:2] * alpha + beta, conc[2:]), dim=0)
        return torch.exp(-(basis @ conc)).reshape(x.shape)


def _factor_range(value: float | Sequence[float], name: str) -> tuple[float, float]:
    """torchvision's convention: v -> (max(0, 1 - v), 1 + v); a (low, high) pair is taken as it is."""
    if isinstance(value, (int, float)):
        v = _check_range(value, name)
        return max(0.0, 1.0 - v), 1.0 + v
    low, high = (float(x) for x in value)
    if not 0.0 <= low <= high:
        raise ValueError(f"{name} range must satisfy 0 <= low <= high, got {tuple(value)}")
    return low, high


def _hue_range(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        v = _check_range(value, "hue")
        return -v, v
    low, high = (float(x) for x in value)
    if not low <= high:
        raise ValueError(f"hue range must satisfy low <= high, got {tuple(value)}")
    return low, high


class RandColorJitter(_RandColourTransform):
    """Random brightness, contrast, saturation and hue, in a random order (torchvision's ``ColorJitter``
    semantics, written in torch; torchvision cannot be imported here).

    Args:
        brightness: factor range; a number ``v`` means ``U(max(0, 1 - v), 1 + v)``, or a (low, high) pair.
            Multiplies intensities.
        contrast: factor range, same convention; blends with the image's mean grey level.
        saturation: factor range, same convention; blends with each pixel's grey level.
        hue: shift range in turns; a number ``h`` means ``U(-h, h)`` (0.5 = half a turn), or a (low,
            high) pair. Shifts wrap around, so a whole turn is the identity.
        prob: probability of applying the jitter.
        max_value: value of full intensity; None: 1 for float input, 255 for uint8 (dtype maximum).

    Every step clips to the valid range, as torchvision does. Input ``3 x H x W`` RGB (float [0, 1] or
    uint8 [0, 255]); output of the same shape, dtype and range.
    """

    _draw_attrs = ("order", "factors")

    def __init__(
        self,
        brightness: float | Sequence[float] = 0.0,
        contrast: float | Sequence[float] = 0.0,
        saturation: float | Sequence[float] = 0.0,
        hue: float | Sequence[float] = 0.0,
        prob: float = 1.0,
        max_value: float | None = None,
    ):
        RandomizableTransform.__init__(self, prob)
        self.brightness = _factor_range(brightness, "brightness")
        self.contrast = _factor_range(contrast, "contrast")
        self.saturation = _factor_range(saturation, "saturation")
        self.hue = _hue_range(hue)
        self.max_value = max_value
        self.order: np.ndarray | None = None
        self.factors: tuple[float, float, float, float] | None = None

    def randomize(self, data: object = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return None
        self.order = self.R.permutation(4)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        self.factors = tuple(float(self.R.uniform(low, high)) for low, high in ranges)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        steps = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        for i in self.order:
            x = steps[i](x, self.factors[i])
        return x


class MacenkoNormalize(Transform):
    """Channel-first adapter of :class:`monai.apps.pathology.transforms.NormalizeHEStains` (Macenko
    stain normalisation to a reference H&E stain matrix).

    MONAI's transform takes a numpy ``uint8 H x W x 3`` image (values 0..255; it computes OD as
    ``-log((I + 1) / tli)``) and returns ``uint8 H x W x 3``; given a channel-first tensor it silently
    treats rows as channels. This adapter converts a ``3 x H x W`` float [0, 1] or uint8 image to that
    layout, normalises, and returns the input's shape, type, dtype and range. A tile without tissue
    (MONAI raises "All pixels of the input image are below the absorbance threshold") is returned
    unchanged: there is no stain to normalise.

    The stain extraction is MONAI's with one correction where the installed MONAI needs it
    (:func:`~monai_pixelcam.transforms.stain.monai_extracts_eosin_first`): MONAI 1.6 returns the eosin vector
    first on typical H&E (even on an image stained with its own reference matrix), which maps eosin onto the
    target hematoxylin colour; then hematoxylin is put first by its larger red/blue OD ratio.

    Args: as :class:`monai.apps.pathology.transforms.NormalizeHEStains` (``tli``, ``alpha``, ``beta``,
        ``target_he``, ``max_cref``), plus ``max_value`` (None: 1 for float input, 255 for uint8).
    """

    backend = [TransformBackends.NUMPY]

    def __init__(
        self,
        tli: float = 240,
        alpha: float = 1,
        beta: float = 0.15,
        target_he: tuple | np.ndarray = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581)),
        max_cref: tuple | np.ndarray = (1.9705, 1.0308),
        max_value: float | None = None,
    ):
        self.normalizer = NormalizeHEStains(tli=tli, alpha=alpha, beta=beta, target_he=target_he, max_cref=max_cref)
        if monai_extracts_eosin_first():
            self.normalizer.stain_extractor = OrderedExtractHEStains(tli=tli, alpha=alpha, beta=beta, max_cref=max_cref)
        self.max_value = max_value

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: ``3 x H x W`` RGB image, float [0, 1] or uint8 [0, 255].
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        x, scale = to_unit(img, self.max_value)
        if x.ndim != 3:
            raise ValueError(f"MacenkoNormalize takes one 3 x H x W image, got shape {tuple(x.shape)}")
        hwc = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        try:
            normed = self.normalizer(hwc)
        except ValueError as e:
            if "below the absorbance threshold" in str(e):
                return img
            raise
        out = torch.from_numpy(normed).permute(2, 0, 1).to(device=x.device, dtype=x.dtype) / 255.0
        return from_unit(out, img, scale)


class AntialiasedResize(Transform):
    """Resize a ``C x H x W`` float map (image or CAM) to ``spatial_size`` with torch's bilinear interpolation,
    antialiased (triangle filter) when shrinking.

    MONAI's ``Resize(anti_aliasing=True)`` pre-smooths with a Gaussian in Python-level torch ops, about 20x
    slower on a 256 px tile; that resize, run on every image of every epoch, dominated data loading. Training,
    evaluation and inference all use this one, so the model always sees images resized the same way. Values
    stay within the input's range (a convex combination). MetaTensor metadata is kept.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: Sequence[int] | int) -> None:
        size = (spatial_size, spatial_size) if isinstance(spatial_size, int) else tuple(spatial_size)
        if len(size) != 2 or any(int(s) < 1 for s in size):
            raise ValueError(f"spatial_size must be one or two positive ints, got {spatial_size!r}")
        self.spatial_size = tuple(int(s) for s in size)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        x = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        if x.ndim != 3:
            raise ValueError(f"AntialiasedResize expects C x H x W, got shape {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.spatial_size:
            x = torch.nn.functional.interpolate(
                x[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True
            )[0]
        out, *_ = convert_to_dst_type(x, img, dtype=torch.float32)
        return out


class NetworkInput(Transform):
    """What the network sees: the one input definition that training, validation, evaluation, folder and slide
    inference and the MONAI Label tasks all build on.

    A ``3 x H x W`` RGB image, float in [0, 1] as :func:`monai_pixelcam.data.io.image_to_rgb` reads every file
    (no mean/std normalisation), is optionally Macenko-normalised at full resolution (before resizing mixes
    pixels), then resized with :class:`AntialiasedResize` to ``spatial_size x spatial_size``; float32 out.

    The model's scale is this input's: a whole image resized to ``spatial_size``. Training draws its random crops
    from this same resize, so the network sees tissue at one scale everywhere; ``model_meta.json`` records
    :meth:`settings` (and the microns per pixel at that size), and every consumer rebuilds the transform from it
    with :meth:`from_settings`.

    Args:
        spatial_size: side ``S`` of the square network input (a positive int).
        stain_normalize: Macenko-normalise first (:class:`MacenkoNormalize`, MONAI's reference stain).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, spatial_size: int, stain_normalize: bool = False) -> None:
        if isinstance(spatial_size, bool) or not isinstance(spatial_size, int) or spatial_size < 1:
            raise ValueError(f"spatial_size must be a positive int, got {spatial_size!r}")
        if not isinstance(stain_normalize, bool):
            raise ValueError(f"stain_normalize must be true or false, got {stain_normalize!r}")
        self.spatial_size = spatial_size
        self.resize = AntialiasedResize(spatial_size)
        self.stain = MacenkoNormalize() if stain_normalize else None

    def __call__(self, img: NdarrayOrTensor) -> torch.Tensor:
        """``3 x H x W`` float [0, 1] -> ``3 x S x S`` float32 tensor in [0, 1] (metadata dropped)."""
        if self.stain is not None:
            img = self.stain(img)
        return convert_to_tensor(self.resize(img), dtype=torch.float32, track_meta=False)

    def settings(self) -> dict:
        """The ``model_meta.json`` entries that rebuild this transform: ``image_size`` and ``stain_normalize``."""
        return {"image_size": self.spatial_size, "stain_normalize": self.stain is not None}

    @classmethod
    def from_settings(cls, settings: Mapping) -> NetworkInput:
        """The transform a model description (``model_meta.json``) asks for; a folder written before these keys
        existed gets the defaults it was trained with then (``image_size`` 224, no stain normalisation)."""
        return cls(settings.get("image_size", 224), settings.get("stain_normalize", False))
