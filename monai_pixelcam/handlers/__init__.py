"""Ignite handlers that observe training: loss terms, non-finite stops, atomic checkpoints, TensorBoard maps."""

from .checkpoint import AtomicCheckpointSaver, InitFromSource
from .loss_terms import LossTermsHandler, loss_terms_transform
from .nan_guard import StopOnNonFiniteLoss
from .tensorboard import TensorBoardMapHandler

__all__ = [
    "AtomicCheckpointSaver",
    "InitFromSource",
    "LossTermsHandler",
    "loss_terms_transform",
    "StopOnNonFiniteLoss",
    "TensorBoardMapHandler",
]
