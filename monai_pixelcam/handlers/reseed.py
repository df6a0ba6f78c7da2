"""A random generator reseeded at every iteration, so that what is drawn with it depends on the iteration alone."""

from __future__ import annotations

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from monai_pixelcam.data.seeded import item_seed

__all__ = ["ReseedEachIteration"]


class ReseedEachIteration:
    """Reseed ``generator`` from ``(seed, rank, iteration)`` when each iteration of the engine starts.

    PixelCAM draws its pixel seeds with such a generator (``PixelCAMLoss(generator=...)``): the draws of an
    iteration then do not depend on how many draws came before, nor on torch's global generator (which every
    data loader iterator consumes), and a run resumed at iteration ``i`` draws what an uninterrupted run draws.

    Args:
        generator: the ``torch.Generator`` to reseed (on the device the draws happen on).
        seed: the run's random seed (bundle id ``seed``); the pixel seeds drawn are :mod:`monai_pixelcam.seeding`'s.
    """

    def __init__(self, generator: torch.Generator, seed: int = 0) -> None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.seed = int(seed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.generator.manual_seed(item_seed(self.seed, idist.get_rank(), engine.state.iteration))
