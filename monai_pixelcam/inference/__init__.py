"""Inference with a trained PixelCAM model: tiles (image folders) and whole-slide images (overlapping windows
over the tissue at the model's mpp, blended), with outputs for viewers (overlay PNG, GeoJSON polygons)."""

from .predictor import InputPreparation, PixelCAMPredictor
from .wsi import (
    DEFAULT_MAX_TILE_PIXELS,
    SLIDE_SUFFIXES,
    SlideScale,
    TiledTiffWSIReader,
    block_mean,
    choose_scale,
    close_slide,
    is_whole_slide,
    open_slide,
    read_rgb_region,
    read_thumbnail,
    slide_mpp,
    wsi_reader,
)
from .windows import BlendedMerger, SlideWindowDataset, TissueWindowSplitter, tissue_mask
from .outputs import write_localization, write_tiles_csv
from .slide import DEFAULT_MAX_HEATMAP_PIXELS, SlidePlan, heatmap_patch_size, localize_slide, plan_slide
from .folder import IMAGE_SUFFIXES, localize_folder, localize_image
from .pyramid import write_pyramid_tiff

__all__ = [
    "InputPreparation",
    "PixelCAMPredictor",
    "DEFAULT_MAX_TILE_PIXELS",
    "SLIDE_SUFFIXES",
    "SlideScale",
    "TiledTiffWSIReader",
    "block_mean",
    "choose_scale",
    "close_slide",
    "is_whole_slide",
    "open_slide",
    "read_rgb_region",
    "read_thumbnail",
    "slide_mpp",
    "wsi_reader",
    "BlendedMerger",
    "SlideWindowDataset",
    "TissueWindowSplitter",
    "tissue_mask",
    "write_localization",
    "write_tiles_csv",
    "DEFAULT_MAX_HEATMAP_PIXELS",
    "SlidePlan",
    "heatmap_patch_size",
    "localize_slide",
    "plan_slide",
    "IMAGE_SUFFIXES",
    "localize_folder",
    "localize_image",
    "write_pyramid_tiff",
]
