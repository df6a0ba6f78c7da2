"""Inference with a trained PixelCAM model: tiles (image folders) and whole-slide images (sliding windows)."""

from .predictor import META_FILE, MODEL_FILE, PixelCAMPredictor
from .folder import IMAGE_SUFFIXES, heatmap_rgb, localize_folder, localize_image, write_csv_atomic, write_nifti_atomic
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
    "META_FILE",
    "MODEL_FILE",
    "PixelCAMPredictor",
    "IMAGE_SUFFIXES",
    "heatmap_rgb",
    "localize_folder",
    "localize_image",
    "write_csv_atomic",
    "write_nifti_atomic",
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
