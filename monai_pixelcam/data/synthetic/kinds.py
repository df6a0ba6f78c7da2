"""The synthetic dataset kinds (``glas``, ``camelyon``) and the drawing of one tile of a kind, in memory."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from monai.utils import look_up_option

from .colon import glas_tissue
from .lymph_node import camelyon_tissue
from .optics import check_stain, to_rgb

__all__ = ["SyntheticKind", "KINDS", "KIND_CODE", "kind_spec", "render_tile"]

_STREAM_TISSUE, _STREAM_SHARED, _STREAM_STAIN = 0, 1, 2
_REF_SIZE = 256.0


@dataclass(frozen=True)
class SyntheticKind:
    """One synthetic dataset: class names, default size, how its test split is made, how a tile is drawn.

    ``tissue(label, shape, scale, rng_tissue, rng_shared) -> (hematoxylin, eosin, mask)``.
    ``fixed_test``: the test split is a fixed share of the images, like GlaS testA + testB, instead of a
    stratified fraction drawn by ``make_splits``. ``min_n``: fewest images that give every split every class.
    ``mpp``: nominal microns per pixel of a ``256 x 256`` tile (the package docstring says how it was chosen);
    a tile of another size shows the same field of view, see :meth:`mpp_at`.
    """

    name: str
    classes: tuple[str, ...]
    negative_classes: tuple[int, ...]
    default_n: int
    test_fraction: float
    fixed_test: bool
    min_n: int
    mpp: float
    tissue: Callable

    def mpp_at(self, image_size: int) -> float:
        """Nominal microns per pixel of an ``image_size`` tile (> 0): the field of view stays that of 256 px."""
        return round(self.mpp * _REF_SIZE / int(image_size), 6)


KINDS: dict[str, SyntheticKind] = {
    "glas": SyntheticKind("glas", ("benign", "malignant"), (), 165, 80 / 165, True, 15, 1.86, glas_tissue),
    "camelyon": SyntheticKind("camelyon", ("normal", "tumor"), (0,), 400, 0.3, False, 12, 0.972, camelyon_tissue),
}
KIND_CODE = {"glas": 1, "camelyon": 2}


def kind_spec(kind: str) -> SyntheticKind:
    """The :class:`SyntheticKind` named ``kind``; ValueError naming it and the kinds otherwise."""
    try:
        return look_up_option(kind, KINDS)
    except ValueError as e:
        raise ValueError(f"unknown synthetic kind {kind!r}: {e}") from None


def _rng(seed: int, kind: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), KIND_CODE[kind], int(index), stream]))


def render_tile(
    kind: str, label: int, image_size: int = 256, *, seed: int = 0, index: int = 0, stain: Mapping | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic tile, in memory.

    Args:
        kind: ``"glas"`` or ``"camelyon"``.
        label: class index into ``KINDS[kind].classes``.
        image_size: side in pixels (>= 32); structures scale with it (same field of view).
        seed, index: the tile is a pure function of (kind, label, image_size, seed, index, stain).
        stain: optional ``{"h_scale": float > 0, "e_scale": float > 0, "hue_shift": float (turns)}``
            applied on top of the per-image stain variation; the tissue and mask do not change with it.

    Returns:
        image: H x W x 3 uint8 RGB; mask: H x W uint8 in {0, 1}.
    """
    spec = kind_spec(kind)
    if label not in range(len(spec.classes)):
        raise ValueError(f"label {label} is outside the classes of {kind}: {list(spec.classes)}")
    if int(image_size) < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    stain = check_stain(stain)
    shape = (int(image_size), int(image_size))
    s = shape[0] / _REF_SIZE
    hh, e, mask = spec.tissue(
        int(label), shape, s, _rng(seed, kind, index, _STREAM_TISSUE), _rng(seed, kind, index, _STREAM_SHARED)
    )
    rgb = to_rgb(hh, e, _rng(seed, kind, index, _STREAM_STAIN), s, stain)
    return rgb, mask.astype(np.uint8)
