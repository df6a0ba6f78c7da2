"""Checkpoint saving that never leaves a half-written file behind."""

from __future__ import annotations

from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically (temporary name, then rename).

    MONAI's saver turns Ignite's atomic writes off (for file permissions, which Ignite now sets itself), so a
    run killed while saving would corrupt the best model. With a fixed file name (``key_metric_filename`` or
    ``final_filename``) Ignite also deletes the previous best *before* writing the new one; here the rename
    replaces it, so some complete checkpoint is on disk at every moment.

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
            saver._atomic = True
            if getattr(saver, "filename", None) is not None:
                # the atomic rename overwrites the fixed name: deleting it first would open a window with no file
                saver.remove = lambda filename: None
