"""MONAI/Ignite engines of both stages: batch preparation, inferers, trainer/evaluator builders, evaluation."""

from .evaluation import evaluate_localization, write_json_atomic
from .inferers import CAMInferer, ClassifierInferer, PixelCAMInferer
from .pipeline import SELECTIONS, evaluate_external, evaluate_pipeline, store_cams
from .prepare_batch import DictTargetPrepareBatch
from .workflows import (
    build_dataloader,
    build_evaluator,
    build_trainer,
    last_checkpoint_path,
    roi_transform,
    sgd_optimizer,
)

__all__ = [
    "DictTargetPrepareBatch",
    "ClassifierInferer",
    "CAMInferer",
    "PixelCAMInferer",
    "build_dataloader",
    "sgd_optimizer",
    "build_trainer",
    "build_evaluator",
    "roi_transform",
    "last_checkpoint_path",
    "evaluate_localization",
    "write_json_atomic",
    "SELECTIONS",
    "store_cams",
    "evaluate_pipeline",
    "evaluate_external",
]
