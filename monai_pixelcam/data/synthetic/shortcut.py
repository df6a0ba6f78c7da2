"""Shortcut check: can colour statistics outside the mask predict the class? (scikit-learn, cross-validated)."""

from __future__ import annotations

import numpy as np

from .kinds import kind_spec, render_tile
from .optics import RJ_E, RJ_H

__all__ = ["region_colour_features", "measure_shortcut"]


def region_colour_features(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Colour statistics of the pixels of ``image`` (H x W x 3 uint8) where ``region`` (H x W bool) is set.

    Returns 11 float64 values: mean and std of R, G, B; mean and std of the hematoxylin and eosin
    optical densities (least-squares unmixing with the Ruifrok-Johnston vectors); fraction of dark
    pixels (grey level < 100, i.e. mostly nuclei). An empty region gives NaNs.
    """
    px = image[region].astype(np.float64)
    if px.size == 0:
        return np.full(11, np.nan)
    od = -np.log((px + 1.0) / 256.0)
    basis = np.stack([RJ_H / np.linalg.norm(RJ_H), RJ_E / np.linalg.norm(RJ_E)])
    he = od @ np.linalg.pinv(basis)
    dark = (px.mean(1) < 100).mean()
    return np.concatenate([px.mean(0), px.std(0), he.mean(0), he.std(0), [dark]])


def measure_shortcut(kind: str, n_images: int = 100, image_size: int = 128, seed: int = 0) -> dict[str, float]:
    """How well colour statistics predict the class from outside versus inside the mask.

    A standardised logistic regression on ``region_colour_features`` is scored by stratified 5-fold
    cross-validation on ``n_images`` tiles (half per class). ``outside`` uses the pixels outside the
    mask, undilated: it must stay near chance (0.5), or a classifier could learn the class, and a WSOL
    model could place its map, away from the region of interest. ``inside`` uses the mask pixels and must
    be clearly above chance; images with an empty mask (CAMELYON normal) borrow the mask of a tumour tile,
    so the comparison is over the same kind of region. ``mask_area`` scores the mask area fraction alone
    (only for kinds without negative classes, where an empty mask would give the class away by design).

    Returns:
        {"outside": accuracy, "inside": accuracy[, "mask_area": accuracy]}, each in [0, 1].
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    spec = kind_spec(kind)
    labels = [i % len(spec.classes) for i in range(n_images)]
    tiles = [render_tile(kind, lab, image_size, seed=seed, index=i) for i, lab in enumerate(labels)]
    masks = [m.astype(bool) for _, m in tiles]
    donors = [m for m in masks if m.any()]
    outside, inside, area = [], [], []
    for i, ((img, _), m) in enumerate(zip(tiles, masks)):
        outside.append(region_colour_features(img, ~m))
        inside.append(region_colour_features(img, m if m.any() else donors[i % len(donors)]))
        area.append([m.mean()])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    y = np.asarray(labels)

    def score(x):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        return float(cross_val_score(model, np.asarray(x), y, cv=cv).mean())

    out = {"outside": score(outside), "inside": score(inside)}
    if not spec.negative_classes:
        out["mask_area"] = score(area)
    return out

