"""Shared fixtures: one tiny synthetic GlaS-like dataset per test session (24 images of 64 x 64)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_glas(tmp_path_factory):
    """Path of the datalist JSON of 24 synthetic 64 x 64 glas images (written once per session)."""
    from monai_pixelcam.data.synthetic import synthesize

    return synthesize("glas", tmp_path_factory.mktemp("tiny_glas"), n_images=24, image_size=64, seed=0, progress=False)
