"""GlaS-like colon tissue: stroma, benign and malignant glands (see the package docstring for the classes).

:func:`glas_tissue` returns hematoxylin and eosin concentration maps (``H x W`` float32, >= 0) and the
gland mask (``H x W`` bool). The *shared* stream draws the stroma, the mask area target and the gland rim
colour (never told the label); the *tissue* stream draws the class-bearing structures inside the mask.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .draw import (
    chromatin, grid, harmonics, paint, sample_pixels, smooth_noise, stamp, star_region, thinned_round_nuclei, wobble,
)

__all__ = ["glas_tissue"]


def _colon_stroma(rng, shape, s):
    """Lamina propria / stroma, the same for both GlaS classes: collagen fibres, fibroblasts, inflammatory cells."""
    h, w = shape
    yy, xx = grid(h, w)
    e = rng.uniform(0.16, 0.26) + 0.04 * smooth_noise(rng, shape, 40 * s) + 0.03 * smooth_noise(rng, shape, 2.5 * s)
    hh = rng.uniform(0.06, 0.1) + 0.015 * smooth_noise(rng, shape, 30 * s)
    # wavy collagen: a warped sine grating, broken into segments
    alpha = rng.uniform(0, math.pi)
    lam = rng.uniform(4.0, 6.5) * s
    warp = rng.uniform(5.0, 9.0) * smooth_noise(rng, shape, 38 * s)
    phase = (xx * math.cos(alpha) + yy * math.sin(alpha)) * (2 * math.pi / lam) + warp
    fib = (0.5 + 0.5 * np.sin(phase)) ** 5 * np.clip(0.5 + 0.7 * smooth_noise(rng, shape, 7 * s), 0, 1)
    loose = np.clip(smooth_noise(rng, shape, 20 * s) - rng.uniform(0.5, 1.5), 0, 1)
    e = (e + rng.uniform(0.2, 0.35) * fib) * (1 - 0.65 * loose)
    hh = (hh + 0.03 * fib) * (1 - 0.5 * loose)
    texture = chromatin(rng, shape, s)
    # fibroblasts: spindle nuclei along the fibres
    n_fib = rng.poisson(rng.uniform(18, 45))
    cy, cx = rng.uniform(-5, h + 5, n_fib), rng.uniform(-5, w + 5, n_fib)
    theta = math.pi / 2 - alpha + rng.normal(0, 0.35, n_fib)
    cov, den = stamp(
        shape, cy, cx, rng.uniform(3.5, 6.5, n_fib) * s, rng.uniform(0.9, 1.5, n_fib) * s, theta,
        rng.uniform(0.8, 1.3, n_fib),
    )
    paint(hh, e, cov, den * texture, 0.15)
    # inflammatory cells (lymphocytes, plasma cells), clustered by a smooth cellularity map
    cell_map = np.clip(0.5 + 0.5 * smooth_noise(rng, shape, 45 * s) + rng.uniform(-0.6, 0.4), 0, 1)
    n_inf = rng.poisson(rng.uniform(20, 160))
    cy, cx = rng.uniform(0, h, n_inf), rng.uniform(0, w, n_inf)
    cov, den = thinned_round_nuclei(rng, shape, cy, cx, cell_map, (1.9, 2.7), (1.2, 1.7), s)
    paint(hh, e, cov, den * texture, 0.15)
    return hh, e


def _benign_glands(rng, shape, s, target):
    """Round, regular, well separated glands until the mask covers ``target`` of the image.

    Returns the mask and, per gland pixel, the epithelium thickness (lumen starts deeper than that).
    """
    h, w = shape
    mask = np.zeros(shape, bool)
    thickness = np.zeros(shape, np.float32)
    for _ in range(250):  # tightly packed crypts need many tries; the area must not give the class away
        if mask.mean() >= target:
            break
        r = rng.uniform(16, 40) * s
        aspect, theta = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
        harm = harmonics(rng, (2, 3, 4), 0.0, 0.06)
        cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        grown = star_region(shape, cy, cx, r + 5 * s, aspect, theta, harm)
        if grown is None or (mask[grown[0]] & grown[1]).any():
            continue
        sl, inside = star_region(shape, cy, cx, r, aspect, theta, harm)
        mask[sl] |= inside
        # tall columnar epithelium; about one gland in ten is cut tangentially (no lumen)
        t = rng.uniform(13.0, 18.0) * s if rng.uniform() > 0.1 else r
        thickness[sl][inside] = min(t, 0.85 * r * aspect) if t < r else t
    return mask, thickness


def _malignant_glands(rng, shape, s, target):
    """Irregular, fused gland complexes (1-4 lobes), each irregular (1), cribriform (2) or solid (3)."""
    h, w = shape
    mask = np.zeros(shape, bool)
    arch = np.zeros(shape, np.int8)
    thickness = np.zeros(shape, np.float32)
    for _ in range(80):
        if mask.mean() >= target:
            break
        r0 = rng.uniform(14, 32) * s
        c0 = rng.uniform(-0.2 * r0, h + 0.2 * r0), rng.uniform(-0.2 * r0, w + 0.2 * r0)
        kind = rng.choice(3, p=[0.5, 0.3, 0.2]) + 1
        t = rng.uniform(12, 18) * s
        for lobe in range(rng.integers(1, 5)):
            ang = rng.uniform(0, 2 * math.pi)
            d = 0.0 if lobe == 0 else rng.uniform(0.6, 1.1) * r0
            blob = star_region(
                shape, c0[0] + d * math.cos(ang), c0[1] + d * math.sin(ang), r0 * rng.uniform(0.6, 1.1),
                rng.uniform(0.45, 1.0), rng.uniform(0, math.pi), harmonics(rng, (2, 3, 5, 7), 0.02, 0.14),
            )
            if blob is None:
                continue
            sl, inside = blob
            mask[sl] |= inside
            arch[sl][inside] = kind
            thickness[sl][inside] = t
    return mask, arch, thickness


class _Gland:
    """Geometry one GlaS tile's gland painters share: all H x W float32 / bool maps."""

    def __init__(self, mask, depth, lumen, rim):
        self.mask, self.lumen, self.rim = mask, lumen, rim
        self.depth = depth  # px inside the gland outline (Euclidean distance transform of the mask)
        self.gy, self.gx = np.gradient(self.depth)  # points inwards, across the epithelium
        no_lumen = np.full(mask.shape, 1e3, np.float32)
        self.lumen_dist = ndimage.distance_transform_edt(~lumen).astype(np.float32) if lumen.any() else no_lumen
        self.epi = mask & ~lumen

    def inward(self, iy, ix):
        """Direction (radians, row axis towards column axis) from the gland outline inwards at pixels (iy, ix)."""
        return np.arctan2(self.gx[iy, ix], self.gy[iy, ix])


def _benign_epithelium(rng, g: _Gland, s, texture, gh, ge):
    """Goblet cells and one basal layer of small, evenly spaced nuclei, elongated across the epithelium."""
    shape = g.mask.shape
    band = g.epi & (g.depth > g.rim + 7.0 * s) & (g.lumen_dist > 2.5 * s)
    cy, cx = sample_pixels(rng, band, int(band.sum() / (40 * s * s) * rng.uniform(0.4, 1.0)))
    n = cy.size
    theta = g.inward(cy.astype(int), cx.astype(int))
    cov, _ = stamp(shape, cy, cx, rng.uniform(2.5, 4.0, n) * s, rng.uniform(1.8, 2.6, n) * s, theta)
    cov *= band
    ge = ge * (1 - cov) + 0.07 * cov
    gh = gh * (1 - cov) + 0.16 * cov
    # nuclei centres on a one-pixel ring at depth d0, every step-th ring pixel in angular order per gland;
    # d0 keeps the whole nucleus (plus jitter and soft edge) deeper than the shared rim
    ry_mean = 3.0 * s
    d0 = g.rim + 1.15 * ry_mean + 1.0
    ring = g.epi & (np.abs(g.depth - d0) < 0.5) & (g.lumen_dist > ry_mean + s)
    ys, xs = np.nonzero(ring)
    if ys.size == 0:
        return gh, ge
    lab, n_lab = ndimage.label(g.mask)
    gid = lab[ys, xs]
    count = np.maximum(np.bincount(gid, minlength=n_lab + 1), 1)
    cyg = np.bincount(gid, ys, n_lab + 1) / count
    cxg = np.bincount(gid, xs, n_lab + 1) / count
    order = np.lexsort((np.arctan2(xs - cxg[gid], ys - cyg[gid]), gid))
    step = max(int(round(4.0 * s)), 1)
    sel = order[(np.arange(order.size) + rng.integers(step)) % step == 0]
    ys, xs = ys[sel], xs[sel]
    n = ys.size
    cov, den = stamp(
        shape, ys + rng.normal(0, 0.25 * s, n), xs + rng.normal(0, 0.25 * s, n), ry_mean * rng.uniform(0.85, 1.15, n),
        rng.uniform(1.3, 1.8, n) * s, g.inward(ys, xs), rng.uniform(1.0, 1.3, n),
    )
    paint(gh, ge, cov, den * texture, 0.12)
    return gh, ge


def _malignant_epithelium(rng, g: _Gland, s, texture, gh, ge):
    """Crowded, stratified, enlarged, pleomorphic, hyperchromatic nuclei; sometimes necrotic luminal debris.

    Returns gh, ge and the debris mask (kept out of the clear lumen)."""
    shape = g.mask.shape
    band = g.epi & (g.depth > g.rim + 2.2 * s + 0.5) & (g.lumen_dist > 2.0 * s)
    cy, cx = sample_pixels(rng, band, int(band.sum() / (26 * s * s)))
    iy, ix = cy.astype(int), cx.astype(int)
    n = cy.size
    # the whole nucleus stays deeper than the shared rim: nuclei near the base are smaller
    ry = np.minimum(rng.uniform(3.2, 5.5, n) * s, g.depth[iy, ix] - g.rim - 0.5)
    wob = wobble(rng, n, 0.15, 0.1)
    cov, den = stamp(
        shape, cy, cx, ry, ry * rng.uniform(0.4, 0.7, n), g.inward(iy, ix) + rng.normal(0, 0.4, n),
        rng.uniform(1.3, 1.8, n), wobble=wob, rim=0.3,
    )
    paint(gh, ge, cov, den * texture, 0.2)
    debris = np.zeros(shape, bool)
    if rng.uniform() < 0.35 and g.lumen.any():
        debris = g.lumen & (g.lumen_dist > 1.5 * s) & (smooth_noise(rng, shape, 4 * s) > 0.5)
        ge = np.where(debris, 0.42, ge)
        gh = np.where(debris, 0.12, gh)
        cy, cx = sample_pixels(rng, debris, int(debris.sum() / (25 * s * s)))
        rr = rng.uniform(0.7, 1.3, cy.size) * s
        cov, den = stamp(shape, cy, cx, rr, rr, 0.0, rng.uniform(1.2, 1.8, cy.size))
        paint(gh, ge, cov, den, 0.2)
    return gh, ge, debris


def glas_tissue(label, shape, s, rng, shared):
    hh, e = _colon_stroma(shared, shape, s)
    target = shared.uniform(0.15, 0.45)
    # outer band of every gland (basal cytoplasm): one colour distribution for both classes
    rim_e, rim_h = shared.uniform(0.32, 0.42), shared.uniform(0.18, 0.24)
    rim = 1.5 * s + 0.5
    texture = chromatin(rng, shape, s)
    if label == 0:
        mask, thickness = _benign_glands(rng, shape, s, target)
        depth = ndimage.distance_transform_edt(mask).astype(np.float32)
        lumen = mask & (depth > thickness + 0.8 * s * smooth_noise(rng, shape, 14 * s))
        cyt_e, cyt_h = rng.uniform(0.3, 0.4), rng.uniform(0.19, 0.26)
    else:
        mask, arch, thickness = _malignant_glands(rng, shape, s, target)
        depth = ndimage.distance_transform_edt(mask).astype(np.float32)
        lumen = (arch == 1) & (depth > thickness + 3.0 * s * smooth_noise(rng, shape, 6 * s))
        crib = arch == 2  # cribriform: round punched-out lumina inside a solid gland
        cy, cx = sample_pixels(rng, crib & (depth > 11 * s), int(crib.sum() / (350 * s * s)))
        rr = rng.uniform(2.5, 6.0, cy.size) * s
        cov, _ = stamp(shape, cy, cx, rr, rr * rng.uniform(0.7, 1, cy.size), rng.uniform(0, math.pi, cy.size))
        lumen |= crib & (cov > 0.5) & (depth > rim + 4 * s)
        cyt_e, cyt_h = rng.uniform(0.4, 0.52), rng.uniform(0.24, 0.32)
    g = _Gland(mask, depth, lumen, rim)
    deep = np.clip((g.depth - rim) / 1.5, 0, 1)
    ge = rim_e + (cyt_e - rim_e) * deep + 0.04 * smooth_noise(rng, shape, 5 * s) * deep
    gh = rim_h + (cyt_h - rim_h) * deep
    # apical (brush) border: a thin eosinophilic line along the lumen
    ge = ge + 0.1 * np.clip(1.0 - np.abs(g.lumen_dist - 1.5 * s) / (1.2 * s), 0, 1) * g.epi
    if label == 0:
        gh, ge = _benign_epithelium(rng, g, s, texture, gh, ge)
        debris = np.zeros(shape, bool)
    else:
        gh, ge, debris = _malignant_epithelium(rng, g, s, texture, gh, ge)
    # lumen: nearly empty, sometimes faint secretion; soft edge towards the epithelium
    clear = ndimage.gaussian_filter((lumen & ~debris).astype(np.float32), 0.7 * s, truncate=2.5)
    ge = ge * (1 - clear) + clear * (0.02 + 0.04 * np.clip(smooth_noise(rng, shape, 12 * s), 0, 2))
    gh = gh * (1 - clear) + clear * 0.01
    # composite: glands over stroma, blending only inside the mask
    alpha = np.clip((g.depth - 0.5) / 1.5, 0, 1)
    return hh * (1 - alpha) + gh * alpha, e * (1 - alpha) + ge * alpha, mask
