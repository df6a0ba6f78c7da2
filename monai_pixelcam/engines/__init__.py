"""MONAI/Ignite pieces of both stages that the bundle configs name: batch preparation, inferers, output
transforms of the metric handlers, the optimiser, and the steps between engines (CAM storing, evaluation)."""

from .evaluation import (
    accuracy_transform,
    evaluate_localization,
    localization_evaluator,
    maps_for_tensorboard,
    roi_transform,
)
from .inferers import CAMInferer, ClassifierInferer, PixelCAMInferer
from .pipeline import SELECTIONS, evaluate_external, evaluate_pipeline, store_cams
from .prepare_batch import DictTargetPrepareBatch
from .builders import build_dataloader, sgd_optimizer

__all__ = [
    "DictTargetPrepareBatch",
    "ClassifierInferer",
    "CAMInferer",
    "PixelCAMInferer",
    "build_dataloader",
    "sgd_optimizer",
    "roi_transform",
    "accuracy_transform",
    "maps_for_tensorboard",
    "localization_evaluator",
    "evaluate_localization",
    "SELECTIONS",
    "store_cams",
    "evaluate_pipeline",
    "evaluate_external",
]
