"""Pictures a person looks at: heat maps, overlays, map grids (image | ground truth | maps) and
precision-recall curves. Blending is ``monai.visualize.blend_images``; mask outlines are
``skimage.segmentation.find_boundaries``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.visualize import blend_images

from monai_pixelcam.atomic import atomic_path

__all__ = ["HEATMAP_CMAP", "heatmap", "heatmap_rgb", "overlay", "map_grid", "save_map_grid", "save_pr_curves"]

#: The matplotlib colour map of every heat map the package draws.
HEATMAP_CMAP = "jet"


def _np(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def heatmap(score: np.ndarray) -> np.ndarray:
    """``H x W`` scores in [0, 1] -> ``H x W x 3`` float RGB in [0, 1] with the 'jet' colour map."""
    from matplotlib import colormaps

    return colormaps[HEATMAP_CMAP](np.clip(score, 0.0, 1.0))[..., :3].astype(np.float32)


def heatmap_rgb(score: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``H x W`` scores in [0, 1] -> ``uint8 H x W x 3`` 'jet' colours; pixels where ``valid`` is False
    (e.g. slide areas no window covered) are white."""
    rgb = np.round(heatmap(np.asarray(score, dtype=np.float32)) * 255.0).astype(np.uint8)
    if valid is not None:
        rgb[~np.asarray(valid, dtype=bool)] = 255
    return rgb


def overlay(image: np.ndarray, score: np.ndarray, alpha: float = 0.5, valid: np.ndarray | None = None) -> np.ndarray:
    """The heat map of ``score`` blended over ``image`` (``monai.visualize.blend_images``).

    Args:
        image: ``H x W x 3`` uint8 RGB, or float in [0, 1].
        score: ``H x W`` in [0, 1], same size as ``image``.
        alpha: weight of the heat map.
        valid: optional ``H x W`` bool; where False the image shows unblended (e.g. glass no window covered).

    Returns:
        ``uint8 H x W x 3``.
    """
    img = np.asarray(image)
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    score = np.clip(np.asarray(score, dtype=np.float32), 0.0, 1.0)
    if img.shape[:2] != score.shape:
        raise ValueError(f"overlay: image {img.shape[:2]} and score map {score.shape} differ in size")
    weight = np.full((1, *score.shape), float(alpha), dtype=np.float32)
    if valid is not None:
        weight[0][~np.asarray(valid, dtype=bool)] = 0.0
    blended = blend_images(
        np.moveaxis(img, -1, 0), score[None], alpha=weight, cmap=HEATMAP_CMAP, rescale_arrays=False,
        transparent_background=False,
    )
    return np.round(np.clip(np.moveaxis(blended, 0, -1), 0.0, 1.0) * 255.0).astype(np.uint8)


def map_grid(images, masks, maps: Sequence, alpha: float = 0.5) -> np.ndarray:
    """One row per image: the image with its mask outlined in green, then each map blended over the image.

    Args:
        images: ``N x 3 x H x W`` in [0, 1].
        masks: ``N x 1 x H x W`` in {0, 1}, or None to skip outlines.
        maps: sequence of ``N x 1 x H x W`` score maps in [0, 1] (any size; resized to the image).
        alpha: weight of the heat map in the blend.

    Returns:
        ``uint8 (N*H) x ((1+M)*W) x 3`` RGB image.
    """
    from skimage.segmentation import find_boundaries

    images = _np(images)
    n, _, h, w = images.shape
    rows = []
    for i in range(n):
        img = np.clip(images[i], 0, 1)
        first = np.transpose(img, (1, 2, 0)).copy()
        if masks is not None:
            first[find_boundaries(_np(masks)[i, 0] > 0.5, mode="inner")] = (0.0, 1.0, 0.0)
        tiles = [first]
        for m in maps:
            m = torch.as_tensor(_np(m)[i : i + 1])
            if m.shape[-2:] != (h, w):
                m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear")
            blended = blend_images(
                img, m[0].clamp(0, 1).numpy(), alpha=alpha, cmap=HEATMAP_CMAP, rescale_arrays=False,
                transparent_background=False,
            )
            tiles.append(np.transpose(blended, (1, 2, 0)))
        rows.append(np.concatenate(tiles, axis=1))
    return (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)


def save_map_grid(path, images, masks, maps: Mapping[str, object]) -> Path:
    """:func:`map_grid` with a header naming each column (``image``, then the keys of ``maps``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = map_grid(images, masks, list(maps.values()))
    cols = ["image + mask", *maps.keys()]
    fig_w = max(4.0, 2.0 * len(cols))
    fig = plt.figure(figsize=(fig_w, fig_w * grid.shape[0] / grid.shape[1] + 0.4), dpi=150)
    ax = fig.add_axes((0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    ax.imshow(grid)
    ax.set_axis_off()
    step = grid.shape[1] / len(cols)
    for j, name in enumerate(cols):
        fig.text((j + 0.5) * step / grid.shape[1], 1 - 0.2 / fig.get_figheight(), name, ha="center", va="center")
    return _save_figure(fig, path)


def save_pr_curves(path, curves: Mapping[str, tuple], title: str = "pixel precision-recall") -> Path:
    """Precision-recall curves, one per method.

    Args:
        curves: name -> ``(precision, recall, ap)`` with arrays in [0, 1] and ``ap`` in [0, 1].
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for name, (precision, recall, ap) in curves.items():
        ax.plot(_np(recall), _np(precision), label=f"{name} (PxAP {100 * ap:.1f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save_figure(fig, path)


def _save_figure(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)
