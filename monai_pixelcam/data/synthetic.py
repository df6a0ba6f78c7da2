"""Embedded synthetic H&E-like datasets, so the whole project runs with no download.

Two kinds mirror the datasets of the PixelCAM benchmark:

* ``glas``: colon tissue, classes ``benign`` / ``malignant``, mask = glands (epithelium + lumen) in both
  classes. Benign glands are round with an open lumen and one basal layer of small nuclei among pale
  goblet cells; malignant glands are irregular, fused or cribriform with small or no lumen and crowded,
  enlarged, pleomorphic, hyperchromatic nuclei. The stroma (collagen fibres, fibroblasts, inflammatory
  cells) is the same distribution in both classes.
* ``camelyon``: lymph-node patches (dense small lymphocytes, scattered pale histiocytes as distractors),
  classes ``normal`` / ``tumor``; tumour patches hold one or more irregular nests of large pale
  pleomorphic cells (mask = the nests), normal patches have an all-zero mask.

Every image is drawn as hematoxylin and eosin concentration maps and turned into RGB through the
Ruifrok-Johnston stain vectors and Beer-Lambert's law (``I = 255 * exp(-OD)``), with per-image stain,
blur, noise and illumination drawn independently of the label.

No shortcut by construction: three independent random streams per image (seeded from
``(seed, kind, index)``) keep what may differ between classes apart from what must not:

* *shared* stream: background tissue (stroma / lymph node), the target mask area fraction and the
  gland rim colour; never told the label, so everything outside the mask has one distribution;
* *tissue* stream: the class-bearing structures, drawn strictly inside the mask (nuclei centres deep
  enough that the whole nucleus plus a shared-colour rim lies inside it);
* *stain* stream: stain vectors and scales, blur, noise, illumination. The ``stain`` argument
  multiplies on top of these, so the same seed re-renders the same tissue (identical masks) with a
  shifted stain, e.g. for a stain-shift benchmark.

Lengths are given for a 256 px image and scaled with ``image_size`` (same field of view).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from monai_pixelcam.data.datalist import make_splits, save_datalist
from monai_pixelcam.data.atomic import write_png_atomic
from monai_pixelcam.data.io import read_mask, read_rgb

__all__ = [
    "KINDS",
    "SyntheticKind",
    "render_tile",
    "synthesize",
    "save_preview",
    "region_colour_features",
    "measure_shortcut",
    "main",
]

# Ruifrok & Johnston (2001) optical-density vectors, rows: hematoxylin, eosin (RGB order).
_RJ_H = np.array([0.65, 0.70, 0.29])
_RJ_E = np.array([0.07, 0.99, 0.11])
_STAIN_KEYS = {"h_scale": 1.0, "e_scale": 1.0, "hue_shift": 0.0}
_STREAM_TISSUE, _STREAM_SHARED, _STREAM_STAIN = 0, 1, 2
_REF_SIZE = 256.0


# ----------------------------------------------------------------------------------------------------
# drawing primitives (all vectorised; the only Python loops run over glands, never over pixels)
# ----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth random field, H x W float32, zero mean and unit std, correlation length about ``cell`` px."""
    h, w = shape
    cell = max(float(cell), 1.0)
    gh, gw = int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3
    coarse = rng.standard_normal((gh, gw), dtype=np.float32)
    big = np.asarray(
        Image.fromarray(coarse).resize((round(gw * cell), round(gh * cell)), Image.Resampling.BICUBIC)
    )
    o = int(round(cell))
    f = big[o : o + h, o : o + w]
    return (f - f.mean()) / (f.std() + 1e-6)


def _as_k(k: int, *values) -> list[np.ndarray]:
    return [np.broadcast_to(np.asarray(v, np.float32), (k,)) for v in values]


def _stamp(
    shape: tuple[int, int],
    cy: np.ndarray,
    cx: np.ndarray,
    ry: np.ndarray | float,
    rx: np.ndarray | float,
    theta: np.ndarray | float = 0.0,
    amount: np.ndarray | float = 1.0,
    *,
    rim: float = 0.0,
    wobble: np.ndarray | None = None,
    soft: float = 0.8,
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise K ellipses with anti-aliased edges.

    Args:
        shape: (H, W) of the canvas.
        cy, cx: K centres in pixels (row, column); centres may lie outside the canvas.
        ry, rx: semi-axes in pixels, ``ry`` along the direction ``theta`` (radians, measured from the
            row axis towards the column axis), ``rx`` across it.
        amount: stain density of each ellipse.
        rim: chromatin at the nuclear membrane: the density grows by ``1 + rim * rho**4`` (rho = 0 at
            the centre, 1 on the edge); vesicular nuclei are pale inside with a dark rim.
        wobble: K x 4 array (a2, phase2, a3, phase3) of outline harmonics, for pleomorphic outlines.
        soft: edge width in pixels.

    Returns:
        coverage (H x W float32 in [0, 1], maximum over ellipses) and density (H x W float32, maximum
        over ellipses of coverage * amount * rim profile).
    """
    h, w = shape
    cy = np.asarray(cy, np.float32).ravel()
    k = cy.size
    cx, ry, rx, theta, amount = _as_k(k, cx, ry, rx, theta, amount)
    cov = np.zeros(shape, np.float32)
    den = np.zeros(shape, np.float32)
    if k == 0:
        return cov, den
    rmax = float(max(ry.max(), rx.max()))
    if wobble is not None:
        rmax *= 1.0 + float(np.abs(wobble[:, 0]).max() + np.abs(wobble[:, 2]).max())
    r = int(math.ceil(rmax + soft)) + 1
    keep = (cy > -r) & (cy < h + r) & (cx > -r) & (cx < w + r)
    if not keep.all():
        cy, cx, ry, rx, theta, amount = (a[keep] for a in (cy, cx, ry, rx, theta, amount))
        wobble = wobble[keep] if wobble is not None else None
        if cy.size == 0:
            return cov, den
    off = np.arange(-r, r + 1)
    iy = np.rint(cy).astype(np.int64)
    ix = np.rint(cx).astype(np.int64)
    dy = (off[None, :, None] + (iy - cy)[:, None, None]).astype(np.float32)
    dx = (off[None, None, :] + (ix - cx)[:, None, None]).astype(np.float32)
    ct = np.cos(theta)[:, None, None]
    st = np.sin(theta)[:, None, None]
    u = dy * ct + dx * st
    v = dx * ct - dy * st
    rho = np.sqrt((u / ry[:, None, None]) ** 2 + (v / rx[:, None, None]) ** 2)
    if wobble is not None:
        phi = np.arctan2(v, u)
        wb = wobble[:, :, None, None].astype(np.float32)
        rho = rho / (1.0 + wb[:, 0] * np.cos(2 * phi + wb[:, 1]) + wb[:, 2] * np.cos(3 * phi + wb[:, 3]))
    rmin = np.minimum(rx, ry)[:, None, None]
    c = np.clip((1.0 - rho) * rmin / soft + 0.5, 0.0, 1.0)
    d = c * amount[:, None, None]
    if rim:
        d = d * (1.0 + rim * np.minimum(rho, 1.0) ** 4)
    # scatter into a padded canvas so stamps may hang over the border
    p = 2 * r + 1  # centres lie within r of the canvas, stamps reach r further
    wp = w + 2 * p
    flat = ((iy[:, None, None] + off[None, :, None] + p) * wp + (ix[:, None, None] + off[None, None, :] + p)).ravel()
    big_c = np.zeros((h + 2 * p) * wp, np.float32)
    big_d = np.zeros_like(big_c)
    np.maximum.at(big_c, flat, c.ravel())
    np.maximum.at(big_d, flat, d.ravel())
    cov = big_c.reshape(h + 2 * p, wp)[p : p + h, p : p + w]
    den = big_d.reshape(h + 2 * p, wp)[p : p + h, p : p + w]
    return np.ascontiguousarray(cov), np.ascontiguousarray(den)


def _paint(layer_h, layer_e, cov, den_h, e_value):
    """Composite a stamped layer (coverage ``cov``, hematoxylin density ``den_h``) over H / E maps in place."""
    layer_h *= 1.0 - cov
    layer_h += den_h
    layer_e *= 1.0 - cov
    layer_e += cov * e_value


def _jittered_grid(rng, shape, spacing, jitter):
    """Points on a square grid of ``spacing`` px, each moved by up to ``jitter * spacing``: (cy, cx) float32."""
    h, w = shape
    gy = np.arange(-spacing / 2, h + spacing, spacing, dtype=np.float32)
    gx = np.arange(-spacing / 2, w + spacing, spacing, dtype=np.float32)
    cy, cx = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    cy = cy + rng.uniform(-jitter, jitter, cy.size).astype(np.float32) * spacing
    cx = cx + rng.uniform(-jitter, jitter, cx.size).astype(np.float32) * spacing
    return cy, cx


def _sample_pixels(rng, region: np.ndarray, count: int):
    """``count`` random sub-pixel positions inside the boolean ``region``: (cy, cx) float32."""
    idx = np.flatnonzero(region)
    if idx.size == 0 or count <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    pick = rng.choice(idx, size=int(count), replace=idx.size < count)
    cy, cx = np.divmod(pick, region.shape[1])
    jit = rng.uniform(-0.45, 0.45, (2, pick.size)).astype(np.float32)
    return cy.astype(np.float32) + jit[0], cx.astype(np.float32) + jit[1]


def _blob(shape, cy, cx, r, aspect, theta, harmonics) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Star-shaped region: an ellipse (semi-axes r, r * aspect) whose radius is modulated by
    ``1 + sum a_k cos(k phi + p_k)`` for ``harmonics`` rows (k, a_k, p_k). Returns (bbox slices, bool)."""
    h, w = shape
    amp = 1.0 + sum(abs(a) for _, a, _ in harmonics)
    ext = r * amp + 2
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = _grid(h, w)
    dy = yy[y0:y1, x0:x1] - cy
    dx = xx[y0:y1, x0:x1] - cx
    u = dy * math.cos(theta) + dx * math.sin(theta)
    v = dx * math.cos(theta) - dy * math.sin(theta)
    rho = np.sqrt(u**2 + (v / aspect) ** 2)
    phi = np.arctan2(v / aspect, u)
    bound = np.ones_like(rho)
    for kk, a, p in harmonics:
        bound += a * np.cos(kk * phi + p)
    return (slice(y0, y1), slice(x0, x1)), rho < r * bound


def _wobble(rng, n, max2, max3):
    """Outline harmonics for ``_stamp``: n x 4 rows (a2, phase2, a3, phase3), amplitudes up to max2, max3."""
    two_pi = 2 * math.pi
    return np.stack(
        [rng.uniform(0, max2, n), rng.uniform(0, two_pi, n), rng.uniform(0, max3, n), rng.uniform(0, two_pi, n)], 1
    )


def _harmonics(rng, ks, amp_lo, amp_hi):
    return [(k, rng.uniform(amp_lo, amp_hi), rng.uniform(0, 2 * math.pi)) for k in ks]


# ----------------------------------------------------------------------------------------------------
# tissue: each returns hematoxylin and eosin concentration maps (H x W float32, >= 0) and the mask
# ----------------------------------------------------------------------------------------------------


def _chromatin(rng, shape, s):
    """Fine multiplicative texture for nuclei (clumped chromatin), mean 1."""
    return 1.0 + 0.22 * _noise(rng, shape, 1.6 * s)


def _colon_stroma(rng, shape, s):
    """Lamina propria / stroma, the same for both GlaS classes: collagen fibres, fibroblasts, inflammatory cells."""
    h, w = shape
    yy, xx = _grid(h, w)
    e = rng.uniform(0.16, 0.26) + 0.04 * _noise(rng, shape, 40 * s) + 0.03 * _noise(rng, shape, 2.5 * s)
    hh = rng.uniform(0.06, 0.1) + 0.015 * _noise(rng, shape, 30 * s)
    # wavy collagen: a warped sine grating, broken into segments
    alpha = rng.uniform(0, math.pi)
    lam = rng.uniform(4.0, 6.5) * s
    warp = rng.uniform(5.0, 9.0) * _noise(rng, shape, 38 * s)
    phase = (xx * math.cos(alpha) + yy * math.sin(alpha)) * (2 * math.pi / lam) + warp
    fib = (0.5 + 0.5 * np.sin(phase)) ** 5 * np.clip(0.5 + 0.7 * _noise(rng, shape, 7 * s), 0, 1)
    loose = np.clip(_noise(rng, shape, 20 * s) - rng.uniform(0.5, 1.5), 0, 1)
    e = (e + rng.uniform(0.2, 0.35) * fib) * (1 - 0.65 * loose)
    hh = (hh + 0.03 * fib) * (1 - 0.5 * loose)
    texture = _chromatin(rng, shape, s)
    # fibroblasts: spindle nuclei along the fibres
    n_fib = rng.poisson(rng.uniform(18, 45))
    cy, cx = rng.uniform(-5, h + 5, n_fib), rng.uniform(-5, w + 5, n_fib)
    theta = math.pi / 2 - alpha + rng.normal(0, 0.35, n_fib)
    cov, den = _stamp(
        shape, cy, cx, rng.uniform(3.5, 6.5, n_fib) * s, rng.uniform(0.9, 1.5, n_fib) * s, theta,
        rng.uniform(0.8, 1.3, n_fib),
    )
    _paint(hh, e, cov, den * texture, 0.15)
    # inflammatory cells (lymphocytes, plasma cells), clustered by a smooth cellularity map
    cell_map = np.clip(0.5 + 0.5 * _noise(rng, shape, 45 * s) + rng.uniform(-0.6, 0.4), 0, 1)
    n_inf = rng.poisson(rng.uniform(20, 160))
    cy, cx = rng.uniform(0, h, n_inf), rng.uniform(0, w, n_inf)
    ok = rng.uniform(0, 1, n_inf) < cell_map[cy.astype(int), cx.astype(int)]
    cy, cx = cy[ok], cx[ok]
    n = cy.size
    r = rng.uniform(1.9, 2.7, n) * s
    cov, den = _stamp(
        shape, cy, cx, r, r * rng.uniform(0.8, 1.0, n), rng.uniform(0, math.pi, n), rng.uniform(1.2, 1.7, n)
    )
    _paint(hh, e, cov, den * texture, 0.15)
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
        harm = _harmonics(rng, (2, 3, 4), 0.0, 0.06)
        cy, cx = rng.uniform(-0.3 * r, h + 0.3 * r), rng.uniform(-0.3 * r, w + 0.3 * r)
        grown = _blob(shape, cy, cx, r + 5 * s, aspect, theta, harm)
        if grown is None or (mask[grown[0]] & grown[1]).any():
            continue
        sl, inside = _blob(shape, cy, cx, r, aspect, theta, harm)
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
            blob = _blob(
                shape, c0[0] + d * math.cos(ang), c0[1] + d * math.sin(ang), r0 * rng.uniform(0.6, 1.1),
                rng.uniform(0.45, 1.0), rng.uniform(0, math.pi), _harmonics(rng, (2, 3, 5, 7), 0.02, 0.14),
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
    cy, cx = _sample_pixels(rng, band, int(band.sum() / (40 * s * s) * rng.uniform(0.4, 1.0)))
    n = cy.size
    theta = g.inward(cy.astype(int), cx.astype(int))
    cov, _ = _stamp(shape, cy, cx, rng.uniform(2.5, 4.0, n) * s, rng.uniform(1.8, 2.6, n) * s, theta)
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
    cov, den = _stamp(
        shape, ys + rng.normal(0, 0.25 * s, n), xs + rng.normal(0, 0.25 * s, n), ry_mean * rng.uniform(0.85, 1.15, n),
        rng.uniform(1.3, 1.8, n) * s, g.inward(ys, xs), rng.uniform(1.0, 1.3, n),
    )
    _paint(gh, ge, cov, den * texture, 0.12)
    return gh, ge


def _malignant_epithelium(rng, g: _Gland, s, texture, gh, ge):
    """Crowded, stratified, enlarged, pleomorphic, hyperchromatic nuclei; sometimes necrotic luminal debris.

    Returns gh, ge and the debris mask (kept out of the clear lumen)."""
    shape = g.mask.shape
    band = g.epi & (g.depth > g.rim + 2.2 * s + 0.5) & (g.lumen_dist > 2.0 * s)
    cy, cx = _sample_pixels(rng, band, int(band.sum() / (26 * s * s)))
    iy, ix = cy.astype(int), cx.astype(int)
    n = cy.size
    # the whole nucleus stays deeper than the shared rim: nuclei near the base are smaller
    ry = np.minimum(rng.uniform(3.2, 5.5, n) * s, g.depth[iy, ix] - g.rim - 0.5)
    wob = _wobble(rng, n, 0.15, 0.1)
    cov, den = _stamp(
        shape, cy, cx, ry, ry * rng.uniform(0.4, 0.7, n), g.inward(iy, ix) + rng.normal(0, 0.4, n),
        rng.uniform(1.3, 1.8, n), wobble=wob, rim=0.3,
    )
    _paint(gh, ge, cov, den * texture, 0.2)
    debris = np.zeros(shape, bool)
    if rng.uniform() < 0.35 and g.lumen.any():
        debris = g.lumen & (g.lumen_dist > 1.5 * s) & (_noise(rng, shape, 4 * s) > 0.5)
        ge = np.where(debris, 0.42, ge)
        gh = np.where(debris, 0.12, gh)
        cy, cx = _sample_pixels(rng, debris, int(debris.sum() / (25 * s * s)))
        rr = rng.uniform(0.7, 1.3, cy.size) * s
        cov, den = _stamp(shape, cy, cx, rr, rr, 0.0, rng.uniform(1.2, 1.8, cy.size))
        _paint(gh, ge, cov, den, 0.2)
    return gh, ge, debris


def _glas_tissue(label, shape, s, rng, shared):
    hh, e = _colon_stroma(shared, shape, s)
    target = shared.uniform(0.15, 0.45)
    # outer band of every gland (basal cytoplasm): one colour distribution for both classes
    rim_e, rim_h = shared.uniform(0.32, 0.42), shared.uniform(0.18, 0.24)
    rim = 1.5 * s + 0.5
    texture = _chromatin(rng, shape, s)
    if label == 0:
        mask, thickness = _benign_glands(rng, shape, s, target)
        depth = ndimage.distance_transform_edt(mask).astype(np.float32)
        lumen = mask & (depth > thickness + 0.8 * s * _noise(rng, shape, 14 * s))
        cyt_e, cyt_h = rng.uniform(0.3, 0.4), rng.uniform(0.19, 0.26)
    else:
        mask, arch, thickness = _malignant_glands(rng, shape, s, target)
        depth = ndimage.distance_transform_edt(mask).astype(np.float32)
        lumen = (arch == 1) & (depth > thickness + 3.0 * s * _noise(rng, shape, 6 * s))
        crib = arch == 2  # cribriform: round punched-out lumina inside a solid gland
        cy, cx = _sample_pixels(rng, crib & (depth > 11 * s), int(crib.sum() / (350 * s * s)))
        rr = rng.uniform(2.5, 6.0, cy.size) * s
        cov, _ = _stamp(shape, cy, cx, rr, rr * rng.uniform(0.7, 1, cy.size), rng.uniform(0, math.pi, cy.size))
        lumen |= crib & (cov > 0.5) & (depth > rim + 4 * s)
        cyt_e, cyt_h = rng.uniform(0.4, 0.52), rng.uniform(0.24, 0.32)
    g = _Gland(mask, depth, lumen, rim)
    deep = np.clip((g.depth - rim) / 1.5, 0, 1)
    ge = rim_e + (cyt_e - rim_e) * deep + 0.04 * _noise(rng, shape, 5 * s) * deep
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
    ge = ge * (1 - clear) + clear * (0.02 + 0.04 * np.clip(_noise(rng, shape, 12 * s), 0, 2))
    gh = gh * (1 - clear) + clear * 0.01
    # composite: glands over stroma, blending only inside the mask
    alpha = np.clip((g.depth - 0.5) / 1.5, 0, 1)
    return hh * (1 - alpha) + gh * alpha, e * (1 - alpha) + ge * alpha, mask


def _lymph_node(rng, shape, s):
    """Lymph node parenchyma, the same for both CAMELYON classes: dense lymphocytes, sparse sinuses, histiocytes."""
    h, w = shape
    e = rng.uniform(0.16, 0.28) + 0.04 * _noise(rng, shape, 30 * s)
    hh = rng.uniform(0.1, 0.17) + 0.03 * _noise(rng, shape, 20 * s)
    texture = _chromatin(rng, shape, s)
    spacing = rng.uniform(5.6, 7.0) * s
    cy, cx = _jittered_grid(rng, shape, spacing, 0.38)
    density = np.clip(0.9 + 0.35 * _noise(rng, shape, 55 * s) + rng.uniform(-0.25, 0.1), 0.2, 1.0)
    iy, ix = cy.astype(int).clip(0, h - 1), cx.astype(int).clip(0, w - 1)
    keep = rng.uniform(0, 1, cy.size) < density[iy, ix]
    cy, cx = cy[keep], cx[keep]
    n = cy.size
    r = rng.uniform(2.2, 3.0, n) * s
    cov, den = _stamp(
        shape, cy, cx, r, r * rng.uniform(0.8, 1.0, n), rng.uniform(0, math.pi, n), rng.uniform(1.3, 1.9, n)
    )
    _paint(hh, e, cov, den * texture, 0.1)
    # histiocytes / centroblasts: single pale larger nuclei with pink cytoplasm (distractors)
    n_hist = rng.poisson(rng.uniform(1, 14))
    cy, cx = rng.uniform(0, h, n_hist), rng.uniform(0, w, n_hist)
    r = rng.uniform(3.2, 4.8, n_hist) * s
    cov, _ = _stamp(shape, cy, cx, r * 2.0, r * 1.7, rng.uniform(0, math.pi, n_hist))
    e = e * (1 - cov) + 0.42 * cov
    hh = hh * (1 - cov) + 0.12 * cov
    cov, den = _stamp(
        shape, cy, cx, r, r * rng.uniform(0.7, 1.0, n_hist), rng.uniform(0, math.pi, n_hist),
        rng.uniform(0.55, 0.85, n_hist), rim=0.6,
    )
    _paint(hh, e, cov, den * texture, 0.12)
    return hh, e


def _camelyon_tissue(label, shape, s, rng, shared):
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
        blob = _blob(
            shape, rng.uniform(0, h), rng.uniform(0, w), r, rng.uniform(0.5, 1.0), rng.uniform(0, math.pi),
            _harmonics(rng, (2, 3, 4, 6), 0.03, 0.14),
        )
        if blob is not None:
            mask[blob[0]] |= blob[1]
    depth = ndimage.distance_transform_edt(mask).astype(np.float32)
    texture = _chromatin(rng, shape, s)
    # tumour cells: abundant pink cytoplasm with faint membranes, large pale vesicular nuclei, nucleoli
    te = rng.uniform(0.4, 0.58) + 0.05 * _noise(rng, shape, 8 * s)
    th = np.full(shape, rng.uniform(0.12, 0.2), np.float32)
    spacing = rng.uniform(12, 16) * s
    cy, cx = _jittered_grid(rng, shape, spacing, 0.3)
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
    wob = _wobble(rng, n, 0.15, 0.12)
    theta = rng.uniform(0, math.pi, n)
    ry = r
    rx = r * rng.uniform(0.6, 1.0, n)
    cov, den = _stamp(shape, cy, cx, ry, rx, theta, rng.uniform(0.45, 0.75, n), wobble=wob, rim=1.0)
    _paint(th, te, cov, den * texture, 0.15)
    has = rng.uniform(0, 1, n) < 0.75
    ang = rng.uniform(0, 2 * math.pi, n)
    off = rng.uniform(0, 0.35, n) * rx
    rn = rng.uniform(0.9, 1.5, n) * s
    cov, den = _stamp(
        shape, (cy + off * np.cos(ang))[has], (cx + off * np.sin(ang))[has], rn[has], rn[has], 0.0,
        rng.uniform(1.4, 2.0, int(has.sum())),
    )
    _paint(th, te, cov, den, 0.15)
    # the outermost pixel of the mask keeps the background, so blur carries nothing tumour-specific out
    alpha = np.clip((depth - 1.0) / 2.0, 0, 1)
    hh = hh * (1 - alpha) + th * alpha
    e = e * (1 - alpha) + te * alpha
    return hh, e, mask


# ----------------------------------------------------------------------------------------------------
# optics: stain space -> RGB
# ----------------------------------------------------------------------------------------------------


def _check_stain(stain: Mapping | None) -> dict:
    if stain is None:
        return dict(_STAIN_KEYS)
    if not isinstance(stain, Mapping):
        raise ValueError(f"stain must be a dict with keys {sorted(_STAIN_KEYS)}, got {type(stain).__name__}")
    unknown = sorted(set(stain) - set(_STAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown stain keys {unknown}; allowed: {sorted(_STAIN_KEYS)}")
    out = {**_STAIN_KEYS, **{k: float(v) for k, v in stain.items()}}
    for key in ("h_scale", "e_scale"):
        if not out[key] > 0:
            raise ValueError(f"stain[{key!r}] must be > 0, got {out[key]}")
    return out


def _unit(v):
    v = np.clip(v, 1e-3, None)
    return v / np.linalg.norm(v)


def _rotate_grey(v, angle):
    """Rotate an optical-density vector about the grey axis (1, 1, 1): a hue change of that stain."""
    k = np.full(3, 1 / math.sqrt(3))
    return v * math.cos(angle) + np.cross(k, v) * math.sin(angle) + k * (k @ v) * (1 - math.cos(angle))


def _to_rgb(hh: np.ndarray, e: np.ndarray, rng: np.random.Generator, s: float, stain: dict) -> np.ndarray:
    """Beer-Lambert rendering of H / E concentration maps (H x W) to uint8 RGB (H x W x 3).

    All per-image draws come from ``rng`` in a fixed order, so a different ``stain`` changes colours only.
    """
    shape = hh.shape
    h_vec = _RJ_H / np.linalg.norm(_RJ_H) + rng.normal(0, 0.025, 3)
    e_vec = _RJ_E / np.linalg.norm(_RJ_E) + rng.normal(0, 0.025, 3)
    hue = rng.normal(0, 0.03) + 2 * math.pi * stain["hue_shift"]
    h_vec = _unit(_rotate_grey(_unit(h_vec), hue))
    e_vec = _unit(_rotate_grey(_unit(e_vec), hue))
    h_scale = rng.uniform(0.85, 1.15) * stain["h_scale"]
    e_scale = rng.uniform(0.85, 1.15) * stain["e_scale"]
    sigma = rng.uniform(0.25, 0.6) * s
    glass = rng.uniform(0.015, 0.05) + rng.normal(0, 0.006, 3)
    bright = rng.uniform(0.95, 1.03)
    gy, gx = rng.uniform(-0.05, 0.05, 2)
    illum_noise = _noise(rng, shape, 90 * s)
    noise_sd = rng.uniform(1.0, 3.5)
    pix_noise = rng.standard_normal((*shape, 3), dtype=np.float32)

    conc = np.stack([hh * h_scale, e * e_scale], -1).astype(np.float32)
    conc = ndimage.gaussian_filter(conc, (sigma, sigma, 0), truncate=3.0)
    od = conc @ np.stack([h_vec, e_vec]).astype(np.float32) + glass.astype(np.float32)
    yy, xx = _grid(*shape)
    illum = bright * (1 + 0.025 * illum_noise + gy * (yy / shape[0] - 0.5) + gx * (xx / shape[1] - 0.5))
    rgb = 255.0 * np.exp(-od) * illum[..., None] + noise_sd * pix_noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticKind:
    """One synthetic dataset: class names, default size, how its test split is made, how a tile is drawn.

    ``tissue(label, shape, scale, rng_tissue, rng_shared) -> (hematoxylin, eosin, mask)``.
    ``fixed_test``: the test split is a fixed share of the images, like GlaS testA + testB, instead of a
    stratified fraction drawn by ``make_splits``. ``min_n``: fewest images that give every split every class.
    """

    name: str
    classes: tuple[str, ...]
    negative_classes: tuple[int, ...]
    default_n: int
    test_fraction: float
    fixed_test: bool
    min_n: int
    tissue: Callable


KINDS: dict[str, SyntheticKind] = {
    "glas": SyntheticKind("glas", ("benign", "malignant"), (), 165, 80 / 165, True, 15, _glas_tissue),
    "camelyon": SyntheticKind("camelyon", ("normal", "tumor"), (0,), 400, 0.3, False, 12, _camelyon_tissue),
}
_KIND_CODE = {"glas": 1, "camelyon": 2}


def _kind(kind: str) -> SyntheticKind:
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; choose one of {sorted(KINDS)}")
    return KINDS[kind]


def _rng(seed: int, kind: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _KIND_CODE[kind], int(index), stream]))


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
    spec = _kind(kind)
    if label not in range(len(spec.classes)):
        raise ValueError(f"label {label} is outside the classes of {kind}: {list(spec.classes)}")
    if int(image_size) < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    stain = _check_stain(stain)
    shape = (int(image_size), int(image_size))
    s = shape[0] / _REF_SIZE
    hh, e, mask = spec.tissue(
        int(label), shape, s, _rng(seed, kind, index, _STREAM_TISSUE), _rng(seed, kind, index, _STREAM_SHARED)
    )
    rgb = _to_rgb(hh, e, _rng(seed, kind, index, _STREAM_STAIN), s, stain)
    return rgb, mask.astype(np.uint8)


def _plan(spec: SyntheticKind, n: int, seed: int) -> tuple[list[int], int]:
    """Labels of images 0..n-1 (balanced, shuffled) and how many of the first images form a fixed test set."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _KIND_CODE[spec.name], 7]))
    n_test = int(round(spec.test_fraction * n)) if spec.fixed_test else 0
    labels: list[int] = []
    for part in (n_test, n - n_test):
        labels.extend(int(v) for v in rng.permutation(np.arange(part) % len(spec.classes)))
    return labels, n_test


def _split(spec: SyntheticKind, items: list[dict], n_test: int, seed: int) -> dict[str, list[dict]]:
    """GlaS-like splits; valpx shrinks below 3 per class only when there are too few images for 3."""
    k = len(spec.classes)
    for valpx in (3, 2, 1):
        if spec.fixed_test:
            splits = make_splits(
                items[n_test:], items[:n_test], valcl_fraction=0.2, valpx_per_class=valpx, seed=seed
            )
        else:
            splits = make_splits(
                items, test_fraction=spec.test_fraction, valcl_fraction=0.2, valpx_per_class=valpx, seed=seed
            )
        if all(len({it["label"] for it in splits[name]}) == k for name in splits):
            return splits
    raise ValueError(
        f"{len(items)} images are too few for {spec.name}: every split (train, valcl, valpx, test) needs "
        f"every class; use n_images >= {spec.min_n}"
    )


def synthesize(
    kind: str,
    out_dir: str | os.PathLike,
    n_images: int | None = None,
    image_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    stain: Mapping | None = None,
) -> Path:
    """Write a synthetic dataset: ``images/<id>.png`` (RGB), ``masks/<id>.png`` (0 / 255),
    ``datalist.json`` and ``preview.png`` under ``out_dir``.

    Args:
        kind: ``"glas"`` (165 images by default: 80 test, the rest split about 80/20 into train and
            valcl, 3 images per class of valcl moved to valpx) or ``"camelyon"`` (400 by default, half
            tumour, 30 % test; normal images get an all-zero mask file so valpx / test scoring works).
        out_dir: created if needed; existing files of the same names are replaced.
        n_images: number of images; None for the kind's default.
        image_size: side of the square images in pixels.
        seed: everything (labels, splits, tissue, stain) is a function of the arguments, byte for byte.
        progress: show a tqdm progress bar.
        stain: optional stain shift (see ``render_tile``). The same seed with another ``stain`` gives the
            same labels, splits, tissue and masks with different colours: a stain-shifted test set.

    Returns:
        path of the datalist JSON (``out_dir/datalist.json``).
    """
    spec = _kind(kind)
    n = spec.default_n if n_images is None else int(n_images)
    if n < spec.min_n:
        raise ValueError(
            f"n_images={n} is too few for {kind}: every split (train, valcl, valpx, test) needs every class; "
            f"use n_images >= {spec.min_n}"
        )
    stain = _check_stain(stain)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    labels, n_test = _plan(spec, n, seed)
    width = max(4, len(str(n - 1)))
    items = [
        {
            "image": str(out / "images" / f"{kind}_{i:0{width}d}.png"),
            "mask": str(out / "masks" / f"{kind}_{i:0{width}d}.png"),
            "label": lab,
            "id": f"{kind}_{i:0{width}d}",
        }
        for i, lab in enumerate(labels)
    ]
    splits = _split(spec, items, n_test, seed)  # before rendering: a too small n fails at once

    from tqdm.auto import tqdm

    for i, it in enumerate(tqdm(items, desc=f"synthesize {kind}", unit="img", disable=not progress)):
        rgb, mask = render_tile(kind, it["label"], image_size, seed=seed, index=i, stain=stain)
        write_png_atomic(it["image"], rgb)
        write_png_atomic(it["mask"], mask * np.uint8(255))
    datalist = {"classes": list(spec.classes), "negative_classes": list(spec.negative_classes), **splits}
    path = save_datalist(datalist, out / "datalist.json")
    save_preview(items, out / "preview.png", classes=spec.classes)
    return path


def save_preview(
    items: Sequence[dict], path: str | os.PathLike, classes: Sequence[str], per_class: int = 6, tile: int = 192
) -> Path:
    """Grid PNG of up to ``per_class`` images of each class (one row per class), mask outlines in green.

    Args:
        items: dicts with ``image``, ``mask`` (path or None) and ``label``.
        path: output PNG, written atomically.
        classes: class names, written on each tile.
    """
    rows = []
    for label, name in enumerate(classes):
        chosen = [it for it in sorted(items, key=lambda d: d["id"]) if it["label"] == label][:per_class]
        row = []
        for it in chosen:
            img = np.array(Image.fromarray(read_rgb(it["image"])).resize((tile, tile), Image.Resampling.BILINEAR))
            if it.get("mask"):
                m = Image.fromarray(read_mask(it["mask"])).resize((tile, tile), Image.Resampling.NEAREST)
                m = np.asarray(m) > 0
                edge = m & ~ndimage.binary_erosion(m, iterations=1, border_value=1)
                edge = ndimage.binary_dilation(edge)
                img[edge] = (0, 230, 0)
            pil = Image.fromarray(img)
            draw = ImageDraw.Draw(pil)
            draw.rectangle((0, 0, 8 + 7 * len(name), 14), fill=(0, 0, 0))
            draw.text((4, 2), name, fill=(255, 255, 255))
            row.append(np.asarray(pil))
        row += [np.full((tile, tile, 3), 255, np.uint8)] * (per_class - len(row))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row], 1))
    return write_png_atomic(path, np.concatenate(rows, 0))


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
    basis = np.stack([_RJ_H / np.linalg.norm(_RJ_H), _RJ_E / np.linalg.norm(_RJ_E)])
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

    spec = _kind(kind)
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


def _stain_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    try:
        return _check_stain(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_pixelcam.data.synthetic",
        description="Write a synthetic H&E-like dataset (images, masks, datalist.json, preview.png).",
    )
    parser.add_argument("--kind", required=True, choices=sorted(KINDS))
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--n", type=int, default=None, help="number of images (default: 165 glas, 400 camelyon)")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stain", type=_stain_arg, default=None,
        help='stain shift as JSON, e.g. \'{"h_scale": 1.3, "e_scale": 0.8, "hue_shift": 0.05}\'',
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        path = synthesize(args.kind, args.out, args.n, args.size, args.seed, not args.no_progress, args.stain)
    except ValueError as e:
        parser.error(str(e))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
