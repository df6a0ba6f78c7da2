"""Stain and colour transforms for H&E histology tiles (array versions).

Conventions shared by every transform in this module:

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

Random transforms keep the draw (``randomize``) apart from its application, as MONAI's do, so that a
dictionary transform can apply one draw to several keys.

Stain *normalisation* is MONAI's :class:`monai.apps.pathology.transforms.NormalizeHEStains` (Macenko),
which wants a ``uint8 H x W x 3`` numpy array; :class:`MacenkoNormalize` adapts it to the channel-first
tensors used here.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from monai.apps.pathology.transforms import ExtractHEStains, NormalizeHEStains
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms.transform import RandomizableTransform, Transform
from monai.utils.enums import TransformBackends
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = [
    "RGB_FROM_HED",
    "HED_FROM_RGB",
    "optical_density",
    "rgb_to_hed",
    "hed_to_rgb",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "macenko_stain_matrix",
    "RandHEDJitter",
    "RandStainAugment",
    "RandColorJitter",
    "MacenkoNormalize",
    "AntialiasedResize",
]

OD_EPS = 1e-6
# scikit-image's ``log_adjust``: HED concentrations are OD / -log(eps)
_HED_SCALE = -math.log(OD_EPS)

# Ruifrok & Johnston (2001) as in skimage.color: rows are the RGB optical densities of H, E and DAB
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# ITU-R 601 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.2989, 0.587, 0.114)


def _check_rgb(img: torch.Tensor, name: str = "image") -> None:
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


def _to_unit(img: NdarrayOrTensor, max_value: float | None) -> tuple[torch.Tensor, float]:
    """Any image -> (plain float tensor in [0, 1] for 1.0-range data, the ``max_value`` used)."""
    t = convert_to_tensor(img, track_meta=False)
    _check_rgb(t)
    scale = _default_max_value(t.dtype) if max_value is None else float(max_value)
    if scale <= 0:
        raise ValueError(f"max_value must be positive, got {max_value}")
    return t.to(_work_dtype(t)) / scale, scale


def _from_unit(out: torch.Tensor, dst: NdarrayOrTensor, scale: float) -> NdarrayOrTensor:
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
    x, _ = _to_unit(img, None)
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
    _check_rgb(h, "hed")
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


# --------------------------------------------------------------------------------------------------
# Macenko stain estimation (torch)


def _hematoxylin_first(he):
    """Order two OD stain vectors (columns of a ``3 x 2`` numpy array or tensor) hematoxylin, eosin.

    In optical density hematoxylin absorbs red relatively more than eosin does (Ruifrok: H (0.65, 0.70,
    0.29), E (0.07, 0.99, 0.11); MONAI's reference: H (0.56, 0.72, 0.41), E (0.22, 0.80, 0.56)), so H
    is the column with the larger red/blue OD ratio. MONAI 1.6's ``ExtractHEStains`` puts the *smaller*
    ratio first (a colour-space intuition applied to OD), which returns eosin first on such images.
    """
    ratio = he[0] / (abs(he[2]) + 1e-6)
    return he[:, [1, 0]] if ratio[0] < ratio[1] else he


def macenko_stain_matrix(
    od: torch.Tensor,
    od_threshold: float = 0.15,
    percentile: float = 1.0,
    min_tissue_fraction: float = 0.01,
    min_stain_angle: float = 0.05,
    max_pixels: int = 1_000_000,
) -> torch.Tensor | None:
    """Macenko et al. (2009) H and E stain vectors of one image.

    Tissue pixels (every channel's OD above ``od_threshold``) are projected on the plane of their two
    main principal axes; the directions at the ``percentile`` and ``100 - percentile`` percentiles of
    the angle in that plane are the two stains; the one with the larger red/blue OD ratio is
    hematoxylin (as in Macenko's reference code; MONAI 1.6's ``ExtractHEStains`` orders them the other
    way round, see :func:`_hematoxylin_first`).

    Args:
        od: natural optical density ``3 x H x W`` (:func:`optical_density`).
        od_threshold: OD above which a channel counts as stained (0.15 as in MONAI).
        percentile: robust extreme angles, in percent.
        min_tissue_fraction: fewer tissue pixels than this fraction of the image -> no estimate.
        min_stain_angle: stain vectors closer than this angle (radians) -> no estimate (one stain only,
            grey or uniform image).
        max_pixels: tissue pixels beyond this number are subsampled with a fixed stride (deterministic;
            also keeps ``torch.quantile`` under its input size limit).

    Returns:
        ``3 x 2`` float tensor, columns the unit OD vectors of H and E, or None when the image holds
        too little tissue or no two distinct stains.
    """
    _check_rgb(od, "od")
    pixels = od.reshape(3, -1).T  # N x 3
    tissue = pixels[(pixels > od_threshold).all(dim=1)]
    # three points at least: a plane needs them
    if tissue.shape[0] < max(3, math.ceil(min_tissue_fraction * pixels.shape[0])):
        return None
    if tissue.shape[0] > max_pixels:
        tissue = tissue[:: math.ceil(tissue.shape[0] / max_pixels)]
    tissue = tissue.to(torch.float64)  # 3 x 3 eigen-decomposition of nearly degenerate covariances
    _, eigvecs = torch.linalg.eigh(torch.cov(tissue.T))
    plane = eigvecs[:, 1:3]
    t = tissue @ plane
    # measure angles from the mean direction so that the data never straddles the -pi/pi cut of atan2
    mean_angle = torch.atan2(t[:, 1].mean(), t[:, 0].mean())
    phi = torch.remainder(torch.atan2(t[:, 1], t[:, 0]) - mean_angle + math.pi, 2 * math.pi) - math.pi
    q = torch.tensor([percentile / 100.0, 1.0 - percentile / 100.0], dtype=phi.dtype)
    extremes = torch.quantile(phi, q) + mean_angle
    vectors = plane @ torch.stack((torch.cos(extremes), torch.sin(extremes)))  # 3 x 2
    vectors = vectors * torch.where(vectors.sum(dim=0) < 0, -1.0, 1.0)
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    if not torch.isfinite(vectors).all():
        return None
    if torch.linalg.cross(vectors[:, 0], vectors[:, 1]).norm() < math.sin(min_stain_angle):
        return None
    return _hematoxylin_first(vectors).to(od.dtype)


def _complete_basis(he: torch.Tensor) -> torch.Tensor:
    """``3 x 2`` stain vectors -> invertible ``3 x 3`` basis; the third column (their normalised cross
    product) carries whatever the two stains do not explain, so unmixing and remixing is lossless."""
    residual = torch.linalg.cross(he[:, 0], he[:, 1])
    return torch.cat((he, (residual / residual.norm())[:, None]), dim=1)


def _ruifrok_basis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    m = torch.as_tensor(RGB_FROM_HED.T, dtype=dtype, device=device)  # columns H, E, DAB
    return m / m.norm(dim=0, keepdim=True)


# --------------------------------------------------------------------------------------------------
# random transforms


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
        x, scale = _to_unit(img, self.max_value)
        return _from_unit(self._apply(x), img, scale)


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
        return _ruifrok_basis(od.dtype, od.device) if he is None else _complete_basis(he)

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


class _OrderedExtractHEStains(ExtractHEStains):
    """MONAI's Macenko stain extraction with hematoxylin reliably first (see :func:`_hematoxylin_first`)."""

    def _deconvolution_extract_stain(self, image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(_hematoxylin_first(super()._deconvolution_extract_stain(image)))


class MacenkoNormalize(Transform):
    """Channel-first adapter of :class:`monai.apps.pathology.transforms.NormalizeHEStains` (Macenko
    stain normalisation to a reference H&E stain matrix).

    MONAI's transform takes a numpy ``uint8 H x W x 3`` image (values 0..255; it computes OD as
    ``-log((I + 1) / tli)``) and returns ``uint8 H x W x 3``; given a channel-first tensor it silently
    treats rows as channels. This adapter converts a ``3 x H x W`` float [0, 1] or uint8 image to that
    layout, normalises, and returns the input's shape, type, dtype and range. A tile without tissue
    (MONAI raises "All pixels of the input image are below the absorbance threshold") is returned
    unchanged: there is no stain to normalise.

    The stain extraction is MONAI's with one correction: MONAI 1.6 returns the eosin vector first on
    typical H&E (even on an image stained with its own reference matrix), which maps eosin onto the
    target hematoxylin colour; here hematoxylin is put first by its larger red/blue OD ratio.

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
        self.normalizer.stain_extractor = _OrderedExtractHEStains(tli=tli, alpha=alpha, beta=beta, max_cref=max_cref)
        self.max_value = max_value

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: ``3 x H x W`` RGB image, float [0, 1] or uint8 [0, 255].
        """
        img = convert_to_tensor(img, track_meta=get_track_meta())
        x, scale = _to_unit(img, self.max_value)
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
        return _from_unit(out, img, scale)


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
