"""CAMELYON16-like lymph node tissue: lymphocytes and histiocytes, and in tumour tiles nests of tumour cells.

:func:`camelyon_tissue` returns hematoxylin and eosin concentration maps (``H x W`` float32, >= 0) and the
tumour mask (``H x W`` bool, empty for ``normal``). The *shared* stream draws the lymph node and the mask
area target; the *tissue* stream draws the tumour nests inside the mask.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .draw import (
    chromatin, harmonics, jittered_grid, paint, smooth_noise, stamp, star_region, thinned_round_nuclei, wobble,
)

__all__ = ["camelyon_tissue"]


def _lymph_node(rng, shape, s):
    """Lymph node parenchyma, the same for both CAMELYON classes: dense lymphocytes, sparse sinuses, histiocytes."""
    h, w = shape
    e = rng.uniform(0.16, 0.28) + 0.04 * smooth_noise(rng, shape, 30 * s)
    hh = rng.uniform(0.1, 0.17) + 0.03 * smooth_noise(rng, shape, 20 * s)
    texture = chromatin(rng, shape, s)
    spacing = rng.uniform(5.6, 7.0) * s
    cy, cx = jittered_grid(rng, shape, spacing, 0.38)
    density = np.clip(0.9 + 0.35 * smooth_noise(rng, shape, 55 * s) + rng.uniform(-0.25, 0.1), 0.2, 1.0)
    cov, den = thinned_round_nuclei(rng, shape, cy, cx, density, (2.2, 3.0), (1.3, 1.9), s)
    paint(hh, e, cov, den * texture, 0.1)
    # histiocytes / centroblasts: single pale larger nuclei with pink cytoplasm (distractors)
    n_hist = rng.poisson(rng.uniform(1, 14))
    cy, cx = rng.uniform(0, h, n_hist), rng.uniform(0, w, n_hist)
    r = rng.uniform(3.2, 4.8, n_hist) * s
    cov, _ = stamp(shape, cy, cx, r * 2.0, r * 1.7, rng.uniform(0, math.pi, n_hist))
    e = e * (1 - cov) + 0.42 * cov
    hh = hh * (1 - cov) + 0.12 * cov
    cov, den = stamp(
        shape, cy, cx, r, r * rng.uniform(0.7, 1.0, n_hist), rng.uniform(0, math.pi, n_hist),
        rng.uniform(0.55, 0.85, n_hist), rim=0.6,
    )
    paint(hh, e, cov, den * texture, 0.12)
    return hh, e


def camelyon_tissue(label, shape, s, rng, shared):
    h, w = shape
    hh, e = _lymph_node(shared, shape, s)
    target = shared.uniform(0.05, 0.5)
    mask = np.zeros(shape, bool)
    if label == 0:
        return hh, e, mask
    for _ in range(40):
        if mask.mean() >= target:
            break
        r = rng.uniform(18, 60) * s
        blob = star_region(
            shape, rng.uniform(0, h), rng.uniform(0, w), r, rng.uniform(0.5, 1.0), rng.uniform(0, math.pi),
            harmonics(rng, (2, 3, 4, 6), 0.03, 0.14),
        )
        if blob is not None:
            mask[blob[0]] |= blob[1]
    depth = ndimage.distance_transform_edt(mask).astype(np.float32)
    texture = chromatin(rng, shape, s)
    # tumour cells: abundant pink cytoplasm with faint membranes, large pale vesicular nuclei, nucleoli
    te = rng.uniform(0.4, 0.58) + 0.05 * smooth_noise(rng, shape, 8 * s)
    th = np.full(shape, rng.uniform(0.12, 0.2), np.float32)
    spacing = rng.uniform(12, 16) * s
    cy, cx = jittered_grid(rng, shape, spacing, 0.3)
    iy, ix = np.rint(cy).astype(int), np.rint(cx).astype(int)
    inb = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
    cy, cx, iy, ix = cy[inb], cx[inb], iy[inb], ix[inb]
    seeds = np.ones(shape, bool)
    seeds[iy, ix] = False
    _, (ny, nx) = ndimage.distance_transform_edt(seeds, return_indices=True)
    cell = ny * w + nx
    border = np.zeros(shape, bool)
    border[:-1] |= cell[:-1] != cell[1:]
    border[:, :-1] |= cell[:, :-1] != cell[:, 1:]
    te = te + 0.12 * border
    th = th + 0.05 * border
    n = cy.size
    r = rng.uniform(4.2, 7.2, n) * s
    inside = depth[iy, ix] > r + 1.5
    cy, cx, r = cy[inside], cx[inside], r[inside]
    n = cy.size
    wob = wobble(rng, n, 0.15, 0.12)
    theta = rng.uniform(0, math.pi, n)
    ry = r
    rx = r * rng.uniform(0.6, 1.0, n)
    cov, den = stamp(shape, cy, cx, ry, rx, theta, rng.uniform(0.45, 0.75, n), wobble=wob, rim=1.0)
    paint(th, te, cov, den * texture, 0.15)
    has = rng.uniform(0, 1, n) < 0.75
    ang = rng.uniform(0, 2 * math.pi, n)
    off = rng.uniform(0, 0.35, n) * rx
    rn = rng.uniform(0.9, 1.5, n) * s
    cov, den = stamp(
        shape, (cy + off * np.cos(ang))[has], (cx + off * np.sin(ang))[has], rn[has], rn[has], 0.0,
        rng.uniform(1.4, 2.0, int(has.sum())),
    )
    paint(th, te, cov, den, 0.15)
    # the outermost pixel of the mask keeps the background, so blur carries nothing tumour-specific out
    alpha = np.clip((depth - 1.0) / 2.0, 0, 1)
    hh = hh * (1 - alpha) + th * alpha
    e = e * (1 - alpha) + te * alpha
    return hh, e, mask

