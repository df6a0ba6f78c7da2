"""Stop training on a non-finite loss with an error that says where and what to do."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from .loss_terms import loss_terms_transform

__all__ = ["StopOnNonFiniteLoss"]


class StopOnNonFiniteLoss:
    """Raise ``FloatingPointError`` as soon as the iteration loss (or one of its terms) is NaN or infinite.

    Ignite's ``TerminateOnNan`` only stops the engine quietly, after which a pipeline would go on to store
    CAMs from a broken model; raising makes the run fail at once, naming the epoch, iteration and terms.
    The last epoch checkpoint on disk is left intact, so the run can resume with a smaller learning rate.
    """

    def __init__(self, name: str = "trainer") -> None:
        self.name = name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        terms = loss_terms_transform(output)
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        if bad:
            raise FloatingPointError(
                f"{self.name}: non-finite loss at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
                f"({', '.join(f'{k}={v}' for k, v in terms.items())}). Lower the learning rate or check the "
                "inputs; the last epoch checkpoint is unchanged and the run resumes from it."
            )
