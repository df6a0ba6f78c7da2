"""The end-of-epoch checkpoint a killed training run resumes from."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from .checkpoint import AtomicCheckpointSaver

__all__ = ["ResumeCheckpoint"]


class ResumeCheckpoint:
    """Save ``save_dict`` plus the trainer's own state to ``save_dir/filename`` after every epoch (atomically),
    and, when that file already exists at attach time, load it back when the trainer starts.

    The trainer is added at ``attach`` (a bundle config cannot list a trainer inside its own handlers). Put
    the validators' best-checkpoint savers (:class:`AtomicCheckpointSaver` with a key metric) in ``save_dict``
    too: their tracking lists then resume with the run, so B-LOC / B-CL selection carries on across a kill.
    List this handler after any handler that sets starting weights at ``STARTED`` (e.g.
    :class:`~monai_pixelcam.handlers.InitFromSource`), so that a resumed run ends with its own weights.

    Args:
        save_dir: folder of the checkpoint.
        filename: its file name, e.g. ``pixelcam_last.pt``.
        save_dict: objects with ``state_dict`` / ``load_state_dict`` (network, optimizer, scheduler, savers).
        map_location: where loaded tensors go.
        resume: load an existing checkpoint; False starts over (the file is then overwritten after epoch 1).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        filename: str,
        save_dict: Mapping,
        map_location: str | torch.device = "cpu",
        resume: bool = True,
    ) -> None:
        if "trainer" in save_dict:
            raise ValueError("ResumeCheckpoint adds the trainer itself at attach: leave 'trainer' out of save_dict")
        self.path = Path(save_dir) / filename
        self.save_dict = dict(save_dict)
        self.map_location = map_location
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        if self.resume and self.path.is_file():
            CheckpointLoader(load_path=str(self.path), load_dict=objects, map_location=self.map_location).attach(engine)
            logging.getLogger(engine.logger.name).info(f"resuming from {self.path}")
        AtomicCheckpointSaver(
            save_dir=str(self.path.parent),
            save_dict=objects,
            save_interval=1,
            n_saved=1,
            interval_filename=self.path.name,
        ).attach(engine)
