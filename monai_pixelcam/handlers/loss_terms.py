"""Copy the terms of a multi-term loss into the engine output so that Stats/TensorBoard handlers log them."""

from __future__ import annotations

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

__all__ = ["LossTermsHandler"]


class LossTermsHandler:
    """After each loss computation, put ``loss_function.last_terms`` (e.g. ``loss_cls``, ``loss_pix``) into
    ``engine.state.output`` next to ``loss``.

    Attached to ``IterationEvents.LOSS_COMPLETED``, it runs before any ``ITERATION_COMPLETED`` handler, so
    ``StatsHandler(output_transform=from_engine(["loss", "loss_cls", "loss_pix"]))`` or
    :func:`loss_terms_transform` sees the terms whatever the handler order.

    Args:
        loss_function: an object with a ``last_terms`` dict of floats, refreshed at every call.
    """

    def __init__(self, loss_function) -> None:
        if not hasattr(loss_function, "last_terms"):
            raise TypeError(f"{type(loss_function).__name__} has no 'last_terms' to log")
        self.loss_function = loss_function

    def attach(self, engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine) -> None:
        engine.state.output.update({k: float(v) for k, v in self.loss_function.last_terms.items()})


def loss_terms_transform(output) -> dict[str, float]:
    """Output transform for ``StatsHandler`` / ``TensorBoardStatsHandler``: every ``loss*`` entry of the
    iteration output as a float (``loss``, ``loss_cls``, ``loss_pix`` for PixelCAM; ``loss`` alone otherwise)."""
    if isinstance(output, list):  # decollated output: the loss entries are the same in every item
        output = output[0]
    return {
        k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v)
        for k, v in output.items()
        if isinstance(k, str) and k.startswith(CommonKeys.LOSS)
    }
