"""Validation every N epochs that also validates the last epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler

__all__ = ["PeriodicValidationHandler"]


class PeriodicValidationHandler(ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler``, plus one validation when training completes on an epoch that
    is not a multiple of ``interval``.

    B-LOC / B-CL checkpoints are written by the validators' savers, so they exist after any number of epochs
    only if the last epoch is validated too (e.g. 5 epochs with ``interval`` 2 validate epochs 2, 4 and 5).

    Args:
        interval: validate every ``interval`` epochs.
        validator: a MONAI evaluator.
        exec_at_start: also validate the initial model.
    """

    def __init__(self, interval: int, validator, exec_at_start: bool = False) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True, exec_at_start=exec_at_start)

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._validate_last_epoch)

    def _validate_last_epoch(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval and not engine.should_terminate:
            self(engine)
