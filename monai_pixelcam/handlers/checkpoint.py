"""Checkpoint saving that never leaves a half-written file behind."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from monai_pixelcam.networks.wsol import unwrap_parallel

__all__ = ["AtomicCheckpointSaver", "InitFromSource"]


class _FixedNameDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` with atomic writes (temporary file, then rename), optionally writing every checkpoint
    under one fixed ``filename``. Ignite's ``Checkpoint`` removes the file it replaces *before* writing the new
    one; under a fixed name the rename replaces it, so that removal is skipped and a complete file is on disk at
    every moment."""

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), atomic=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver:
    """The best checkpoint by a key metric, and one every ``save_interval`` epochs, written atomically.

    The arguments the bundle uses of ``monai.handlers.CheckpointSaver``, on Ignite's public ``Checkpoint`` and
    ``DiskSaver(atomic=True)``. Not MONAI's saver itself: it builds ``DiskSaver(atomic=False)`` and takes no save
    handler, so a run killed (or a disk failing) while it writes loses the best model it had
    (``tests/test_atomic_checkpoint.py`` reproduces that on the installed MONAI).

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict`` to save (network, optimizer, ...).
        save_key_metric: keep the checkpoint with the best key metric (checked after every epoch).
        key_metric_name: the ``engine.state.metrics`` entry; None: the engine's ``state.key_metric_name``.
        key_metric_n_saved: how many best checkpoints to keep (1 with a fixed ``key_metric_filename``).
        key_metric_filename: one fixed file name for the best checkpoint (e.g. ``pixelcam_bcl.pt``); None:
            Ignite's ``<prefix>_<name>_key_metric=<score>.pt``.
        key_metric_greater_or_equal: a later epoch with an equal score replaces the saved one.
        save_interval: save every N epochs (0: never), keeping the last ``n_saved`` (None: all).
        interval_filename: one fixed file name for it (e.g. ``last.pt``, the one a killed run resumes from).
        file_prefix: prefix of Ignite's file names.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping,
        save_key_metric: bool = False,
        key_metric_name: str | None = None,
        key_metric_n_saved: int = 1,
        key_metric_filename: str | None = None,
        key_metric_greater_or_equal: bool = False,
        save_interval: int = 0,
        n_saved: int | None = None,
        interval_filename: str | None = None,
        file_prefix: str = "",
    ) -> None:
        if not save_dict:
            raise ValueError("AtomicCheckpointSaver needs objects to save (save_dict)")
        if key_metric_filename is not None and key_metric_n_saved != 1:
            raise ValueError("a fixed key_metric_filename holds one checkpoint: key_metric_n_saved must be 1")
        self.key_metric_name = key_metric_name
        self.save_interval = int(save_interval)
        self.key_metric: Checkpoint | None = None
        self.interval: Checkpoint | None = None
        if save_key_metric:
            self.key_metric = Checkpoint(
                dict(save_dict), _FixedNameDiskSaver(save_dir, key_metric_filename), filename_prefix=file_prefix,
                score_function=self._score, score_name="key_metric", n_saved=key_metric_n_saved,
                greater_or_equal=key_metric_greater_or_equal,
            )  # fmt: skip
        if self.save_interval > 0:
            self.interval = Checkpoint(
                dict(save_dict), _FixedNameDiskSaver(save_dir, interval_filename), filename_prefix=file_prefix,
                score_function=lambda engine: engine.state.epoch, score_name="epoch", n_saved=n_saved,
            )  # fmt: skip

    def _score(self, engine: Engine) -> float:
        name = self.key_metric_name or getattr(engine.state, "key_metric_name", None)
        if name is None:
            raise ValueError("AtomicCheckpointSaver: no key_metric_name, and the engine has no key metric")
        return float(engine.state.metrics[name])

    def attach(self, engine: Engine) -> None:
        if self.key_metric is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.key_metric)
        if self.interval is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.interval)

    def state_dict(self) -> dict:
        """The key-metric tracking list (which checkpoint is best so far, with its score), for a resume
        checkpoint; the same layout as MONAI's ``CheckpointSaver``. Empty without a key metric."""
        return {} if self.key_metric is None else self.key_metric.state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore :meth:`state_dict` (an empty one, of a saver without key metric, restores nothing)."""
        if self.key_metric is not None and state_dict:
            self.key_metric.load_state_dict(state_dict)


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
