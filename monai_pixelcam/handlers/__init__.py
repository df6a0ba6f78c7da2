"""Ignite handlers that observe training: loss terms, non-finite stops, atomic checkpoints, TensorBoard maps,
and the figures (map grids, precision-recall curves) written at evaluation."""

from .checkpoint import AtomicCheckpointSaver, InitFromSource
from .figures import heatmap, map_grid, save_map_grid, save_png, save_pr_curves
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
    "heatmap",
    "map_grid",
    "save_png",
    "save_map_grid",
    "save_pr_curves",
]
