"""Colour-space functions for H&E tiles: optical density, HED colour deconvolution, HSV, torchvision-style
colour adjustments.

Conventions shared by every function and transform of :mod:`monai_pixelcam.transforms`:

* An image is ``3 x H x W`` RGB (channel first, as everywhere in MONAI); the functions also take batches
  ``B x 3 x H x W`` (channel dimension ``-3``).
* Values are float in [0, 1] or integer (``uint8``) in [0, 255]: a transform converts to float [0, 1]
  internally (``max_value``, default: 1 for floats, the dtype's maximum for integers) and returns the
  input's dtype and range, clipped (and rounded for integers).
* Optical density (Beer-Lambert): ``OD = -log(max(I, eps))`` with ``I`` in [0, 1] and ``eps = 1e-6``
  (natural log; white glass has OD 0, a black pixel OD 13.8). The Macenko transforms work in these
  natural OD units with unit-length stain vectors.
* HED concentrations (:func:`rgb_to_hed`) follow :func:`skimage.color.rgb2hed` exactly: the OD divided
  by ``-log(eps)`` (about 13.8) and unmixed with the Ruifrok-Johnston matrix, so the ``sigma``/``bias``
  values published for HED jitter (Tellez et al., used with scikit-image) mean the same here. Unlike
  scikit-image, negative concentrations are kept (not clipped to 0), so that ``hed_to_rgb(rgb_to_hed(x))``
  gives back ``x`` for every colour, not only those inside the H-E-DAB cone.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = [
    "OD_EPS",
    "RGB_FROM_HED",
    "HED_FROM_RGB",
    "check_rgb",
    "to_unit",
    "from_unit",
    "optical_density",
    "rgb_to_hed",
    "hed_to_rgb",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
]

OD_EPS = 1e-6
# scikit-image's ``log_adjust``: HED concentrations are OD / -log(eps)
_HED_SCALE = -math.log(OD_EPS)

# Ruifrok & Johnston (2001) as in skimage.color: rows are the RGB optical densities of H, E and DAB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# ITU-R 601 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def check_rgb(img: torch.Tensor, name: str = "image") -> None:
    if img.ndim < 3 or img.shape[-3] != 3:
        raise ValueError(f"{name} must be 3 x H x W (or B x 3 x H x W) RGB, got shape {tuple(img.shape)}")


def _work_dtype(img: torch.Tensor) -> torch.dtype:
    return torch.float64 if img.dtype == torch.float64 else torch.float32


def _default_max_value(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return 1.0
    if dtype == torch.bool:
        raise ValueError("boolean images are not supported; convert to uint8 or float first")
    return float(torch.iinfo(dtype).max)


def to_unit(img: NdarrayOrTensor, max_value: float | None) -> tuple[torch.Tensor, float]:
    """Any image -> (plain float tensor in [0, 1] for 1.0-range data, the ``max_value`` used)."""
    t = convert_to_tensor(img, track_meta=False)
    check_rgb(t)
    scale = _default_max_value(t.dtype) if max_value is None else float(max_value)
    if scale <= 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    return t.to(_work_dtype(t)) / scale, scale


def from_unit(out: torch.Tensor, dst: NdarrayOrTensor, scale: float) -> NdarrayOrTensor:
    """Float [0, 1] result -> the type, dtype and range of ``dst`` (clipped; rounded for integers)."""
    out = out.clamp(0.0, 1.0) * scale
    if not (dst.dtype.is_floating_point if isinstance(dst, torch.Tensor) else np.issubdtype(dst.dtype, np.floating)):
        out = out.round()
    result, *_ = convert_to_dst_type(out, dst=dst)
    return result


def _mix(img: torch.Tensor, matrix: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Per-pixel ``out[..., j, h, w] = sum_c img[..., c, h, w] * matrix[c, j]``."""
    m = torch.as_tensor(matrix, dtype=img.dtype, device=img.device)
    return torch.einsum("...chw,cj->...jhw", img, m)


def optical_density(img: torch.Tensor) -> torch.Tensor:
    """Natural optical density ``-log(max(I, 1e-6))`` of a float image in [0, 1] (any shape)."""
    return -torch.log(img.clamp(min=OD_EPS))


def rgb_to_hed(img: NdarrayOrTensor) -> NdarrayOrTensor:
    """RGB -> HED stain concentrations (Ruifrok-Johnston colour deconvolution).

    Same values as :func:`skimage.color.rgb2hed` (channel first, see the module docstring) except that
    negative concentrations are kept, which makes the conversion invertible by :func:`hed_to_rgb`.

    Args:
        img: ``3 x H x W`` or ``B x 3 x H x W`` RGB; float in [0, 1], or an integer dtype scaled by its
            maximum (uint8: 255). Torch tensor or numpy array.

    Returns:
        float ``3 x H x W`` (or batched) H, E, DAB concentrations, of the input's container type (float64
        for float64 input, float32 otherwise). Typical H&E values lie in [0, 0.15].
    """
    x, _ = to_unit(img, None)
    hed = _mix(optical_density(x) / _HED_SCALE, HED_FROM_RGB)
    out, *_ = convert_to_dst_type(hed, dst=img, dtype=hed.dtype)
    return out


def hed_to_rgb(hed: NdarrayOrTensor) -> NdarrayOrTensor:
    """HED stain concentrations -> RGB float in [0, 1] (inverse of :func:`rgb_to_hed`, as
    :func:`skimage.color.hed2rgb`).

    Args:
        hed: float ``3 x H x W`` or ``B x 3 x H x W`` concentrations (torch tensor or numpy array).

    Returns:
        float RGB of the same shape and container type, clipped to [0, 1].
    """
    h = convert_to_tensor(hed, track_meta=False)
    check_rgb(h, "hed")
    h = h.to(_work_dtype(h))
    rgb = torch.exp(-_mix(h * _HED_SCALE, RGB_FROM_HED)).clamp(0.0, 1.0)
    out, *_ = convert_to_dst_type(rgb, dst=hed, dtype=rgb.dtype)
    return out

# --------------------------------------------------------------------------------------------------
# colour adjustments (torchvision semantics, float [0, 1] tensors ... x 3 x H x W)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return (img * w).sum(dim=-3, keepdim=True)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return (factor * img + (1.0 - factor) * other).clamp(0.0, 1.0)


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Multiply intensities by ``factor`` >= 0 (0: black, 1: unchanged); float [0, 1] in and out."""
    return _blend(img, torch.zeros_like(img), factor)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's mean grey level (0: uniform grey, 1: unchanged); float [0, 1] in and out."""
    mean = _grayscale(img).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def adjust_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the pixel's grey level (0: greyscale, 1: unchanged); float [0, 1] in and out."""
    return _blend(img, _grayscale(img), factor)


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """RGB float [0, 1] ``... x 3 x H x W`` -> HSV, each channel in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = img.unbind(dim=-3)
    maxc = img.amax(dim=-3)
    minc = img.amin(dim=-3)
    delta = maxc - minc
    grey = delta == 0
    s = delta / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    d = torch.where(grey, torch.ones_like(delta), delta)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(grey, torch.zeros_like(h), torch.remainder(h / 6.0, 1.0))
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """HSV ``... x 3 x H x W`` (channels in [0, 1], hue wraps modulo 1) -> RGB float [0, 1]."""
    h, s, v = img.unbind(dim=-3)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long() % 6  # h6 can round up to exactly 6.0
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    # sector i -> (r, g, b) as indices into (v, q, p, t)
    table = torch.tensor(
        [[0, 3, 2], [1, 0, 2], [2, 0, 3], [2, 1, 0], [3, 2, 0], [0, 2, 1]], device=img.device
    )  # rows: sector; columns: r, g, b
    candidates = torch.stack((v, q, p, t), dim=-3)
    index = table[i].movedim(-1, -3)  # ... x 3 x H x W
    return torch.gather(candidates, -3, index).clamp(0.0, 1.0)


def adjust_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (any real; 0 and whole turns leave the image unchanged up to
    float rounding); float RGB [0, 1] in and out."""
    hsv = rgb_to_hsv(img)
    h, s, v = hsv.unbind(dim=-3)
    return hsv_to_rgb(torch.stack((torch.remainder(h + shift, 1.0), s, v), dim=-3))

