"""Inference with a trained PixelCAM model: tiles (image folders) and whole-slide images (sliding windows)."""

from .predictor import PixelCAMPredictor
from .folder import IMAGE_SUFFIXES, localize_folder, localize_image
from .wsi import (
    DEFAULT_MAX_TILE_PIXELS,
    SLIDE_SUFFIXES,
    TiledTiffWSIReader,
    is_whole_slide,
    localize_slide,
    read_thumbnail,
    tile_grid,
    tissue_mask,
    wsi_reader,
)

__all__ = [
    "PixelCAMPredictor",
    "IMAGE_SUFFIXES",
    "localize_folder",
    "localize_image",
    "DEFAULT_MAX_TILE_PIXELS",
    "SLIDE_SUFFIXES",
    "TiledTiffWSIReader",
    "is_whole_slide",
    "localize_slide",
    "read_thumbnail",
    "tile_grid",
    "tissue_mask",
    "wsi_reader",
]
