"""The MONAI checkpoint defect that AtomicCheckpointSaver exists for, reproduced on the installed MONAI, and the fix."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from monai_pixelcam.handlers import AtomicCheckpointSaver


class _FailsInEpoch2:
    """A saved object whose state cannot be pickled in epoch 2: the save dies halfway through writing."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        return {"epoch": self.engine.state.epoch, "payload": torch.zeros(4096)} | (
            {"unpicklable": lambda: None} if self.engine.state.epoch == 2 else {}
        )

    def load_state_dict(self, state: dict) -> None:
        pass


def _run(saver_cls, tmp_path):
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(acc=float(e.state.epoch)))
    saver = saver_cls(
        str(tmp_path), {"state": _FailsInEpoch2(engine)}, save_key_metric=True, key_metric_name="acc",
        key_metric_filename="best.pt",
    )
    saver.attach(engine)
    with pytest.raises(Exception, match="pickle"):
        engine.run([0], max_epochs=2)
    return tmp_path / "best.pt"


def test_monai_saver_loses_the_best_model_when_a_save_fails(tmp_path):
    best = _run(CheckpointSaver, tmp_path)
    # the defect, on the installed MONAI: the epoch-1 best was deleted before writing and the epoch-2 write died halfway: nothing loadable is left
    with pytest.raises(Exception):
        torch.load(best, weights_only=True)


def test_atomic_saver_keeps_the_last_complete_checkpoint(tmp_path):
    best = _run(AtomicCheckpointSaver, tmp_path)
    assert torch.load(best, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary left behind
