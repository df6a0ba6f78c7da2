"""B-LOC selection among the checkpoints that still classify: the localization score is gated by accuracy."""

from __future__ import annotations

import logging
import math

from ignite.engine import Engine, Events

__all__ = ["AccuracyGatedMetric"]


class AccuracyGatedMetric:
    """Add ``gated_name`` to a validator's metrics: its ``metric_name`` (e.g. valpx PxAP) while the model's
    latest classification accuracy (read from another validator, e.g. valcl) is within ``margin`` of the best
    accuracy seen so far, and ``-inf`` otherwise. A checkpoint saver keyed on ``gated_name`` then keeps the
    best-localizing checkpoint among those that classify (B-LOC restricted to near-B-CL accuracy).

    Why: B-LOC alone is chosen on a few valpx images; it can pick an epoch whose classifier is at chance, and
    every map derived from it (the CAMs PixelCAM learns from, its class-conditional inference) is then wrong.
    The reference protocol has no such gate; ``margin=None`` turns it off (``gated_name`` = ``metric_name``).

    The threshold is the best accuracy *so far* (a saver decides at each validation), so it only rises; the
    first validation always passes it. Handlers of an Ignite event run in the order they are attached: attach
    it after the validator's metrics (a MONAI evaluator attaches them at construction) and before its saver
    and stats handlers (the bundle lists it first), so that they all see this validation's value.

    Args:
        accuracy_validator: the evaluator whose ``state.metrics[accuracy_name]`` is the accuracy, run before
            this validator in the same epoch.
        metric_name: the key metric to gate (in this validator's ``state.metrics``).
        accuracy_name: the accuracy metric, a fraction in [0, 1].
        gated_name: name of the gated metric written for the saver.
        margin: accuracy below the best by more than this (fraction, e.g. 0.05 = 5 points) closes the gate;
            None: never closes.
    """

    def __init__(
        self,
        accuracy_validator: Engine,
        metric_name: str = "valpx_pxap",
        accuracy_name: str = "valcl_accuracy",
        gated_name: str = "valpx_pxap_gated",
        margin: float | None = 0.05,
    ) -> None:
        if margin is not None and not 0.0 <= margin <= 1.0:
            raise ValueError(f"AccuracyGatedMetric: margin must be a fraction in [0, 1] or None, got {margin!r}")
        self.accuracy_validator = accuracy_validator
        self.metric_name = metric_name
        self.accuracy_name = accuracy_name
        self.gated_name = gated_name
        self.margin = margin
        self.best_accuracy = -math.inf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics[self.metric_name]
        if self.margin is None:
            engine.state.metrics[self.gated_name] = value
            return
        metrics = getattr(self.accuracy_validator.state, "metrics", None) or {}
        if self.accuracy_name not in metrics:
            raise RuntimeError(
                f"AccuracyGatedMetric: '{self.accuracy_name}' not in the accuracy validator's metrics "
                f"({sorted(metrics)}); it must be validated before '{self.metric_name}' in the same epoch"
            )
        accuracy = float(metrics[self.accuracy_name])
        self.best_accuracy = max(self.best_accuracy, accuracy)
        passed = accuracy >= self.best_accuracy - self.margin
        engine.state.metrics[self.gated_name] = value if passed else -math.inf
        if not passed:
            logging.getLogger(engine.logger.name).info(
                f"{self.metric_name} {value:.4f} not eligible for selection: {self.accuracy_name} {accuracy:.4f} "
                f"is below the best so far ({self.best_accuracy:.4f}) by more than {self.margin}"
            )

    def state_dict(self) -> dict:
        """The best accuracy so far, for a resume checkpoint."""
        return {"best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict) -> None:
        self.best_accuracy = float(state["best_accuracy"])
