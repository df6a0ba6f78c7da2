"""Checkpoint saving that never leaves a half-written file behind."""

from __future__ import annotations

import logging
import os

from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from monai_pixelcam.networks.wsol import unwrap_parallel

__all__ = ["AtomicCheckpointSaver", "InitFromSource", "writes_in_place"]

logger = logging.getLogger(__name__)


def writes_in_place(save_handler) -> bool:
    """Whether an Ignite ``DiskSaver`` writes straight into the checkpoint file (its ``atomic`` option off), as the
    one MONAI 1.6's ``CheckpointSaver`` builds does. The check reads the saver itself, so a MONAI that writes
    atomically is not patched."""
    return getattr(save_handler, "_atomic", None) is False


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically (temporary name, then rename).

    MONAI's saver turns Ignite's atomic writes off (for file permissions, which Ignite now sets itself), so a
    run killed while saving would corrupt the best model. With a fixed file name (``key_metric_filename`` or
    ``final_filename``) Ignite also deletes the previous best *before* writing the new one; here the rename
    replaces it, so some complete checkpoint is on disk at every moment. Both corrections apply only where
    :func:`writes_in_place` finds MONAI's in-place writes (Ignite's ``atomic`` flag is the only way to set them
    after MONAI built the saver).

    Args:
        interval_filename: a fixed file name for the every-``save_interval`` checkpoint (e.g. ``last.pt``,
            the one a killed run resumes from) instead of ``checkpoint_epoch=N.pt``.
        args, kwargs: as ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args, interval_filename: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if interval_filename is not None and self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler.filename = interval_filename
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is None:
                continue
            saver = ckpt.save_handler
            if writes_in_place(saver):
                saver._atomic = True
            elif getattr(saver, "_atomic", None) is not True:
                logger.warning(f"{type(saver).__name__} has no atomic-write switch: checkpoints are written as it writes")
                continue
            if getattr(saver, "filename", None) is not None:
                # the atomic rename overwrites the fixed name: deleting it first would open a window with no file
                saver.remove = lambda filename: None

    def state_dict(self) -> dict:
        """The key-metric tracking list (which checkpoint is best so far, with its score), for a resume
        checkpoint; the twin of MONAI's ``load_state_dict``, which restores it. Empty without a key metric."""
        return {} if self._key_metric_checkpoint is None else self._key_metric_checkpoint.state_dict()


class InitFromSource:
    """Load the source classifier's checkpoint into a ``PixelCAMNet`` when its training starts.

    Loading at ``STARTED`` instead of at construction lets a bundle build the PixelCAM trainer before the
    source model exists. The bundle lists it before the resume ``CheckpointLoader``,
    so a resumed run ends up with its own weights, not the source's.

    Args:
        network: a ``PixelCAMNet`` (or a ``DistributedDataParallel`` around one).
        checkpoint: the source ``WSOLClassifier`` checkpoint (e.g. ``source_bloc.pt``).
    """

    def __init__(self, network, checkpoint: str | os.PathLike) -> None:
        self.network = network
        self.checkpoint = checkpoint

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        unwrap_parallel(self.network).load_source(self.checkpoint)
        logging.getLogger(engine.logger.name).info(f"encoder and image head initialised from {self.checkpoint}")
