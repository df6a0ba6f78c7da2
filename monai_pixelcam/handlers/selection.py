"""B-LOC chosen after the run among the checkpoints that classify: the best valpx localization among the
validations whose valcl accuracy is within a margin of the run's best and above a constant classifier's."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events

from ..atomic import atomic_path, write_json_atomic

__all__ = ["Candidate", "BLOCSelector", "constant_accuracy", "read_selection"]

logger = logging.getLogger(__name__)


def constant_accuracy(items: Sequence[Mapping]) -> float:
    """Accuracy of a constant classifier on ``items`` (datalist entries with ``label``): the share of the most
    frequent class, in [0, 1] (0 for no items)."""
    counts: dict[int, int] = {}
    for it in items:
        counts[int(it["label"])] = counts.get(int(it["label"]), 0) + 1
    return max(counts.values()) / len(items) if items else 0.0


@dataclass(frozen=True)
class Candidate:
    """One validation: its trainer epoch, the localization score (e.g. valpx PxAP) and the valcl accuracy."""

    epoch: int
    score: float
    accuracy: float


class BLOCSelector:
    """B-LOC checkpoint chosen by the whole run's accuracy, kept current after every validation.

    Rule: among the run's validations whose accuracy is at least the run's best minus ``margin`` and above
    ``constant_accuracy`` (a classifier that always answers the most frequent valcl class), the one with the
    highest localization score (ties: the higher accuracy, then the earlier epoch). When no validation is
    above the constant classifier, the one with the best accuracy (a warning says so). ``margin=None`` is the
    reference's B-LOC: the highest score, whatever the accuracy.

    Why after the run: B-LOC alone is chosen on a few valpx images and can pick an early epoch whose
    classifier is at chance; every map derived from it (the CAMs PixelCAM learns from, its class-conditional
    inference) is then wrong. Judged against the best accuracy *so far*, an early epoch passes because nothing
    better is known yet. Here the choice is made again after every validation as if the run ended there, so
    ``filename`` holds the after-run choice once training ends (and a valid checkpoint at every moment).

    To make that possible, the weights of every validation that can still win are kept under
    ``<save_dir>/<stem>_candidates/``: a validation drops out for good once its accuracy is below the best
    so far by more than ``margin`` (the best only rises) or another kept one has a score and an accuracy at
    least as high (it would win whenever this one is eligible). ``<stem>_selection.json`` records the choice
    (epoch, score, accuracy), the run's best accuracy, the constant classifier's and every validation.

    One handler computes and decides, at the validator's ``EPOCH_COMPLETED``: attach it after the validator's
    metrics (a MONAI evaluator attaches them at construction). It reads the accuracy from
    ``accuracy_validator``, which must have run in the same epoch (the bundle validates valcl first). A
    validation is named by the validator's epoch, which MONAI's evaluators set to the trainer's. Every rank
    decides alike (the metrics are reduced over ranks); rank 0 writes the files.

    Args:
        accuracy_validator: the evaluator whose ``state.metrics[accuracy_name]`` is the accuracy in [0, 1].
        save_dict: ``{"network": module}`` (the objects whose ``state_dict`` a checkpoint holds; one object is
            saved as its bare state dict, as Ignite's ``Checkpoint`` does).
        save_dir: folder of the checkpoint, its candidates and its record.
        filename: the B-LOC checkpoint's file name, e.g. ``source_bloc.pt``.
        metric_name: the localization score in this validator's ``state.metrics``.
        accuracy_name: the accuracy metric of ``accuracy_validator``.
        margin: fraction (0.05 = 5 points) below the run's best accuracy still eligible; None: no gate.
        constant_accuracy: accuracy of a constant classifier on valcl (:func:`constant_accuracy`); a
            validation must be above it to be eligible.
    """

    def __init__(
        self,
        accuracy_validator: Engine,
        save_dict: Mapping[str, torch.nn.Module],
        save_dir: str | os.PathLike,
        filename: str = "bloc.pt",
        metric_name: str = "valpx_pxap",
        accuracy_name: str = "valcl_accuracy",
        margin: float | None = 0.05,
        constant_accuracy: float = 0.0,
    ) -> None:
        if margin is not None and not 0.0 <= margin <= 1.0:
            raise ValueError(f"BLOCSelector: margin must be a fraction in [0, 1] or None, got {margin!r}")
        self.accuracy_validator = accuracy_validator
        self.save_dict = dict(save_dict)
        self.save_dir = Path(save_dir)
        self.filename = filename
        self.metric_name = metric_name
        self.accuracy_name = accuracy_name
        self.margin = margin
        self.constant_accuracy = float(constant_accuracy)
        self.history: list[Candidate] = []
        self.kept: list[Candidate] = []
        self.chosen: Candidate | None = None

    # --- the rule ----------------------------------------------------------------------------------------
    @property
    def best_accuracy(self) -> float:
        return max((c.accuracy for c in self.history), default=-math.inf)

    def eligible(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` may be chosen, judged against every validation so far."""
        if self.margin is None:
            return True
        return candidate.accuracy >= self.best_accuracy - self.margin and candidate.accuracy > self.constant_accuracy

    @staticmethod
    def _order(c: Candidate) -> tuple:
        return (c.score, c.accuracy, -c.epoch)

    def choose(self) -> Candidate | None:
        """The validation chosen if the run ended now (see the class docstring)."""
        pool = [c for c in self.kept if self.eligible(c)]
        if pool:
            return max(pool, key=self._order)
        if not self.kept:
            return None
        return max(self.kept, key=lambda c: (c.accuracy, c.score, -c.epoch))

    def _still_possible(self, c: Candidate) -> bool:
        if self.margin is not None and c.accuracy < self.best_accuracy - self.margin:
            return False
        return not any(
            o is not c and o.score >= c.score and o.accuracy >= c.accuracy and self._order(o) > self._order(c)
            for o in self.kept
        )

    # --- files -------------------------------------------------------------------------------------------
    @property
    def _stem(self) -> str:
        return Path(self.filename).stem

    def _candidate_path(self, c: Candidate) -> Path:
        return self.save_dir / f"{self._stem}_candidates" / f"epoch{c.epoch}.pt"

    def _save_candidate(self, c: Candidate) -> None:
        states = {k: obj.state_dict() for k, obj in self.save_dict.items()}
        with atomic_path(self._candidate_path(c)) as tmp:
            torch.save(next(iter(states.values())) if len(states) == 1 else states, tmp)

    def record(self) -> dict:
        """The ``<stem>_selection.json`` payload."""
        chosen = self.chosen
        return {
            "chosen": asdict(chosen) if chosen else None,
            "chosen_eligible": bool(chosen and self.eligible(chosen)),
            "best_accuracy": self.best_accuracy if self.history else None,
            "best_accuracy_epoch": (
                max(self.history, key=lambda c: (c.accuracy, -c.epoch)).epoch if self.history else None
            ),
            "constant_accuracy": self.constant_accuracy,
            "margin": self.margin,
            "metric": self.metric_name,
            "validations": [asdict(c) for c in self.history],
        }

    # --- the handler -------------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        metrics = getattr(self.accuracy_validator.state, "metrics", None) or {}
        if self.accuracy_name not in metrics:
            raise RuntimeError(
                f"BLOCSelector: '{self.accuracy_name}' not in the accuracy validator's metrics ({sorted(metrics)}); "
                f"it must be validated before '{self.metric_name}' in the same epoch"
            )
        epoch = int(engine.state.epoch)
        current = Candidate(epoch, float(engine.state.metrics[self.metric_name]), float(metrics[self.accuracy_name]))
        self.history.append(current)
        self.kept.append(current)
        dropped = [c for c in self.kept if not self._still_possible(c)]
        self.kept = [c for c in self.kept if c not in dropped]
        chosen, previous = self.choose(), self.chosen
        self.chosen = chosen
        if idist.get_rank() == 0:
            if current in self.kept:
                self._save_candidate(current)
            if chosen != previous:
                with atomic_path(self.save_dir / self.filename) as tmp:
                    shutil.copyfile(self._candidate_path(chosen), tmp)
            for c in dropped:
                self._candidate_path(c).unlink(missing_ok=True)
            write_json_atomic(self.record(), self.save_dir / f"{self._stem}_selection.json")
        log = logging.getLogger(engine.logger.name)
        log.info(
            f"{self.filename}: epoch {chosen.epoch} ({self.metric_name} {chosen.score:.4f}, {self.accuracy_name} "
            f"{chosen.accuracy:.4f}; best accuracy so far {self.best_accuracy:.4f}, constant classifier "
            f"{self.constant_accuracy:.4f})"
        )
        if self.margin is not None and not self.eligible(chosen):
            log.warning(
                f"{self.filename}: no validation classifies above a constant classifier "
                f"({self.accuracy_name} <= {self.constant_accuracy:.4f}); kept the best accuracy's"
            )

    def state_dict(self) -> dict:
        """The run's validations, the kept candidates and the choice, for a resume checkpoint."""
        return {
            "history": [asdict(c) for c in self.history],
            "kept": [asdict(c) for c in self.kept],
            "chosen": asdict(self.chosen) if self.chosen else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = [Candidate(**c) for c in state["history"]]
        self.kept = [Candidate(**c) for c in state["kept"]]
        self.chosen = Candidate(**state["chosen"]) if state.get("chosen") else None


def read_selection(path: str | os.PathLike) -> dict | None:
    """A ``<stem>_selection.json`` record, or None when there is none."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
