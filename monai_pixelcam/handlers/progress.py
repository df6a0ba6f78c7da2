"""Ignite's progress bar as a bundle handler (``attach(engine)`` only, like MONAI's handlers)."""

from __future__ import annotations

from collections.abc import Callable

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["ProgressBarHandler"]


class ProgressBarHandler:
    """``ignite.handlers.ProgressBar`` whose ``output_transform`` is given at construction, so that a bundle
    config can list it among a trainer's handlers (MONAI engines call ``handler.attach(engine)``).

    Args:
        desc: the bar's label (e.g. the stage name).
        output_transform: engine output -> ``{name: value}`` shown beside the bar (e.g. the loss terms).
        persist: keep the finished bar of each epoch on screen.
    """

    def __init__(self, desc: str = "", output_transform: Callable | None = None, persist: bool = True) -> None:
        self.bar = ProgressBar(persist=persist, desc=desc)
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        self.bar.attach(engine, output_transform=self.output_transform)
