"""Optics of the synthetic slides: hematoxylin / eosin concentration maps -> RGB through Beer-Lambert's law.

Stain vectors are Ruifrok-Johnston's, perturbed per image; ``I = 255 * exp(-OD)`` with blur, glass tint,
illumination gradient and sensor noise. The optional ``stain`` shift multiplies on top of the per-image draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from .draw import grid, smooth_noise

__all__ = ["RJ_H", "RJ_E", "STAIN_KEYS", "check_stain", "to_rgb"]

# Ruifrok & Johnston (2001) optical-density vectors, rows: hematoxylin, eosin (RGB order).
RJ_H = np.array([0.65, 0.70, 0.29])
RJ_E = np.array([0.07, 0.99, 0.11])
STAIN_KEYS = {"h_scale": 1.0, "e_scale": 1.0, "hue_shift": 0.0}


def check_stain(stain: Mapping | None) -> dict:
    if stain is None:
        return dict(STAIN_KEYS)
    if not isinstance(stain, Mapping):
        raise ValueError(f"stain must be a dict with keys {sorted(STAIN_KEYS)}, got {type(stain).__name__}")
    unknown = sorted(set(stain) - set(STAIN_KEYS))
    if unknown:
        raise ValueError(f"unknown stain keys {unknown}; allowed: {sorted(STAIN_KEYS)}")
    out = {**STAIN_KEYS, **{k: float(v) for k, v in stain.items()}}
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


def to_rgb(hh: np.ndarray, e: np.ndarray, rng: np.random.Generator, s: float, stain: dict) -> np.ndarray:
    """Beer-Lambert rendering of H / E concentration maps (H x W) to uint8 RGB (H x W x 3).

    All per-image draws come from ``rng`` in a fixed order, so a different ``stain`` changes colours only.
    """
    shape = hh.shape
    h_vec = RJ_H / np.linalg.norm(RJ_H) + rng.normal(0, 0.025, 3)
    e_vec = RJ_E / np.linalg.norm(RJ_E) + rng.normal(0, 0.025, 3)
    hue = rng.normal(0, 0.03) + 2 * math.pi * stain["hue_shift"]
    h_vec = _unit(_rotate_grey(_unit(h_vec), hue))
    e_vec = _unit(_rotate_grey(_unit(e_vec), hue))
    h_scale = rng.uniform(0.85, 1.15) * stain["h_scale"]
    e_scale = rng.uniform(0.85, 1.15) * stain["e_scale"]
    sigma = rng.uniform(0.25, 0.6) * s
    glass = rng.uniform(0.015, 0.05) + rng.normal(0, 0.006, 3)
    bright = rng.uniform(0.95, 1.03)
    gy, gx = rng.uniform(-0.05, 0.05, 2)
    illum_noise = smooth_noise(rng, shape, 90 * s)
    noise_sd = rng.uniform(1.0, 3.5)
    pix_noise = rng.standard_normal((*shape, 3), dtype=np.float32)

    conc = np.stack([hh * h_scale, e * e_scale], -1).astype(np.float32)
    conc = ndimage.gaussian_filter(conc, (sigma, sigma, 0), truncate=3.0)
    od = conc @ np.stack([h_vec, e_vec]).astype(np.float32) + glass.astype(np.float32)
    yy, xx = grid(*shape)
    illum = bright * (1 + 0.025 * illum_noise + gy * (yy / shape[0] - 0.5) + gx * (xx / shape[1] - 0.5))
    rgb = 255.0 * np.exp(-od) * illum[..., None] + noise_sd * pix_noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)

