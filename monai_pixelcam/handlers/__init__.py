"""Ignite handlers that observe training, as the bundle configs list them: loss terms, non-finite stops,
validation every N epochs and at the end, B-LOC chosen after the run among the checkpoints that classify,
BatchNorm statistics recomputed before validation, a progress bar, atomic checkpoints, TensorBoard maps, and the
pixel-seed generator reseeded at every iteration."""

from .checkpoint import AtomicCheckpointSaver, InitFromSource
from .loss_terms import LossTermsHandler, loss_terms_transform
from .nan_guard import StopOnNonFiniteLoss
from .precise_bn import PreciseBatchNorm
from .progress import ProgressBarHandler
from .reseed import ReseedEachIteration
from .resume import ResumeCheckpoint
from .selection import BLOCSelector, constant_accuracy, read_selection
from .tensorboard import TensorBoardMapHandler
from .validation import PeriodicValidationHandler

__all__ = [
    "AtomicCheckpointSaver",
    "BLOCSelector",
    "constant_accuracy",
    "read_selection",
    "InitFromSource",
    "LossTermsHandler",
    "loss_terms_transform",
    "StopOnNonFiniteLoss",
    "PreciseBatchNorm",
    "PeriodicValidationHandler",
    "ProgressBarHandler",
    "ReseedEachIteration",
    "ResumeCheckpoint",
    "TensorBoardMapHandler",
]
