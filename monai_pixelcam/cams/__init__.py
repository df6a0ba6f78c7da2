"""CAM extractors (CAM, GradCAM, GradCAM++, LayerCAM), cross-class distinctiveness maps, and the stored-CAM
cache of a source model."""

from monai_pixelcam.cams.extractors import (
    CAM,
    CAM_METHODS,
    BaseCAM,
    GradCAM,
    GradCAMpp,
    LayerCAM,
    build_cam,
    canonical_method_name,
    normalize_maps,
)
from monai_pixelcam.cams.distinct import DISTINCT, CrossClassDistinctiveness, DistinctCAM, build_distinct
from monai_pixelcam.cams.seed_maps import ORACLE, MaskOracle, SeedMaps, prepare_seed_maps, store_method_name
from monai_pixelcam.cams.store import (
    CAMStore,
    LoadStoredCAMD,
    LoadStoredCAMd,
    LoadStoredCAMDict,
    StaleCAMStoreError,
    sha256_file,
)

__all__ = [
    "BaseCAM",
    "CAM",
    "GradCAM",
    "GradCAMpp",
    "LayerCAM",
    "CAM_METHODS",
    "build_cam",
    "canonical_method_name",
    "normalize_maps",
    "DISTINCT",
    "CrossClassDistinctiveness",
    "DistinctCAM",
    "build_distinct",
    "CAMStore",
    "StaleCAMStoreError",
    "LoadStoredCAMd",
    "LoadStoredCAMD",
    "LoadStoredCAMDict",
    "sha256_file",
    "MaskOracle",
    "ORACLE",
    "store_method_name",
    "SeedMaps",
    "prepare_seed_maps",
]
