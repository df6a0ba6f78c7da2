"""Drawing primitives of the synthetic tissue: smooth noise fields, anti-aliased ellipses, star-shaped regions.

All vectorised; the only Python loops of the generator run over glands, never over pixels. Maps are
``H x W`` float32 (or bool for regions), positions in pixels (row, column).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = [
    "grid",
    "smooth_noise",
    "stamp",
    "paint",
    "jittered_grid",
    "sample_pixels",
    "star_region",
    "wobble",
    "harmonics",
    "chromatin",
]


@lru_cache(maxsize=8)
def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
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


def stamp(
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


def paint(layer_h, layer_e, cov, den_h, e_value):
    """Composite a stamped layer (coverage ``cov``, hematoxylin density ``den_h``) over H / E maps in place."""
    layer_h *= 1.0 - cov
    layer_h += den_h
    layer_e *= 1.0 - cov
    layer_e += cov * e_value


def jittered_grid(rng, shape, spacing, jitter):
    """Points on a square grid of ``spacing`` px, each moved by up to ``jitter * spacing``: (cy, cx) float32."""
    h, w = shape
    gy = np.arange(-spacing / 2, h + spacing, spacing, dtype=np.float32)
    gx = np.arange(-spacing / 2, w + spacing, spacing, dtype=np.float32)
    cy, cx = (a.ravel() for a in np.meshgrid(gy, gx, indexing="ij"))
    cy = cy + rng.uniform(-jitter, jitter, cy.size).astype(np.float32) * spacing
    cx = cx + rng.uniform(-jitter, jitter, cx.size).astype(np.float32) * spacing
    return cy, cx


def thinned_round_nuclei(rng, shape, cy, cx, density: np.ndarray, radius, darkness, scale: float = 1.0):
    """Keep each candidate centre with the probability ``density`` (H x W, in [0, 1]) has there, then stamp
    near-round nuclei of radius ``radius`` (low, high) x ``scale`` px, aspect 0.8-1, any orientation, stain
    density ``darkness`` (low, high): :func:`stamp`'s (coverage, density) maps."""
    h, w = shape
    iy, ix = cy.astype(int).clip(0, h - 1), cx.astype(int).clip(0, w - 1)
    keep = rng.uniform(0, 1, cy.size) < density[iy, ix]
    cy, cx = cy[keep], cx[keep]
    n = cy.size
    r = rng.uniform(*radius, n) * scale
    return stamp(shape, cy, cx, r, r * rng.uniform(0.8, 1.0, n), rng.uniform(0, math.pi, n), rng.uniform(*darkness, n))


def sample_pixels(rng, region: np.ndarray, count: int):
    """``count`` random sub-pixel positions inside the boolean ``region``: (cy, cx) float32."""
    idx = np.flatnonzero(region)
    if idx.size == 0 or count <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    pick = rng.choice(idx, size=int(count), replace=idx.size < count)
    cy, cx = np.divmod(pick, region.shape[1])
    jit = rng.uniform(-0.45, 0.45, (2, pick.size)).astype(np.float32)
    return cy.astype(np.float32) + jit[0], cx.astype(np.float32) + jit[1]


def star_region(shape, cy, cx, r, aspect, theta, harmonics) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Star-shaped region: an ellipse (semi-axes r, r * aspect) whose radius is modulated by
    ``1 + sum a_k cos(k phi + p_k)`` for ``harmonics`` rows (k, a_k, p_k). Returns (bbox slices, bool)."""
    h, w = shape
    amp = 1.0 + sum(abs(a) for _, a, _ in harmonics)
    ext = r * amp + 2
    y0, y1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, h)
    x0, x1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = grid(h, w)
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


def wobble(rng, n, max2, max3):
    """Outline harmonics for ``stamp``: n x 4 rows (a2, phase2, a3, phase3), amplitudes up to max2, max3."""
    two_pi = 2 * math.pi
    return np.stack(
        [rng.uniform(0, max2, n), rng.uniform(0, two_pi, n), rng.uniform(0, max3, n), rng.uniform(0, two_pi, n)], 1
    )


def harmonics(rng, ks, amp_lo, amp_hi):
    return [(k, rng.uniform(amp_lo, amp_hi), rng.uniform(0, 2 * math.pi)) for k in ks]


def chromatin(rng, shape, s):
    """Fine multiplicative texture for nuclei (clumped chromatin), mean 1."""
    return 1.0 + 0.22 * smooth_noise(rng, shape, 1.6 * s)

