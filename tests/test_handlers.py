"""The Ignite handlers of monai_pixelcam.handlers, each driven by a plain ``ignite.engine.Engine`` on toy outputs."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from monai_pixelcam.handlers import (
    BLOCSelector,
    constant_accuracy,
    AtomicCheckpointSaver,
    InitFromSource,
    LossTermsHandler,
    StopOnNonFiniteLoss,
    TensorBoardMapHandler,
    loss_terms_transform,
)
from monai_pixelcam.losses import PixelCAMLoss
from monai_pixelcam.networks import build_classifier, build_pixelcam
from monai_pixelcam.seeding import ThresholdSeeder
from monai_pixelcam.visualize import map_grid

# ------------------------------------------------------------------------------------------------ loss terms


def _pixelcam_batches(n: int = 3, b: int = 4) -> list[tuple[dict, dict]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            {"cls": torch.randn(b, 2, generator=g), "pix": torch.randn(b, 2, 4, 4, generator=g)},
            {"label": torch.arange(b) % 2, "cam": torch.rand(b, 1, 4, 4, generator=g)},
        )
        for _ in range(n)
    ]


def _trainer_like(loss_fn) -> Engine:
    """An engine whose iteration sets ``state.output`` and fires LOSS_COMPLETED, as MONAI's trainer does."""

    def step(engine, batch):
        pred, target = batch
        engine.state.output = {"loss": loss_fn(pred, target)}
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        return engine.state.output

    engine = Engine(step)
    engine.register_events(*IterationEvents)
    return engine


def test_loss_terms_reach_the_output_before_iteration_handlers():
    loss_fn = PixelCAMLoss(ThresholdSeeder(n_fg=2, n_bg=3), lambda_pix=0.5)
    engine = _trainer_like(loss_fn)
    seen = []
    # attached first: it must still find the terms of its own iteration in the output
    engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append((dict(e.state.output), dict(loss_fn.last_terms)))
    )
    LossTermsHandler(loss_fn).attach(engine)
    engine.run(_pixelcam_batches(), max_epochs=1)
    assert len(seen) == 3
    for output, terms in seen:
        assert {"loss", "loss_cls", "loss_pix", "n_fg", "n_bg"} <= set(output)
        for key, value in terms.items():
            assert isinstance(output[key], float) and output[key] == value
        assert output["loss"].item() == pytest.approx(output["loss_cls"] + 0.5 * output["loss_pix"], rel=1e-6)
        logged = loss_terms_transform(output)
        assert set(logged) == {"loss", "loss_cls", "loss_pix"} and all(isinstance(v, float) for v in logged.values())
    assert len({output["loss_pix"] for output, _ in seen}) == 3  # refreshed at every iteration
    with pytest.raises(TypeError, match="CrossEntropyLoss has no 'last_terms'"):
        LossTermsHandler(torch.nn.CrossEntropyLoss())


def test_loss_terms_transform_plain_and_decollated_outputs():
    loss = torch.tensor(0.75, requires_grad=True) * 2
    output = {"loss": loss, "loss_pix": 0.25, "pred": torch.ones(2, 2), 3: 1.0, "label": torch.tensor([1, 0])}
    assert loss_terms_transform(output) == {"loss": 1.5, "loss_pix": 0.25}
    decollated = [output, {"loss": torch.tensor(9.0)}]  # the loss entries are the batch's, take the first item
    assert loss_terms_transform(decollated) == {"loss": 1.5, "loss_pix": 0.25}
    assert loss_terms_transform({"pred": torch.zeros(1)}) == {}


# ------------------------------------------------------------------------------------------- non-finite stop


def _run_losses(outputs: list, handler=None) -> Engine:
    """Run epochs of 3 iterations whose outputs are ``outputs`` in turn."""
    engine = Engine(lambda e, _: outputs[e.state.iteration - 1])
    (handler or StopOnNonFiniteLoss()).attach(engine)
    engine.run([0, 1, 2], max_epochs=len(outputs) // 3)
    return engine


def test_non_finite_loss_or_term_stops_with_where_and_what():
    finite = {"loss": torch.tensor(1.0), "loss_pix": 0.5, "pred": torch.full((2,), float("nan"))}
    engine = _run_losses([finite] * 6)  # NaN outside the loss entries is not the guard's business
    assert engine.state.iteration == 6
    bad_loss = [finite, {"loss": torch.tensor(float("nan")), "loss_pix": 0.5}, finite]
    with pytest.raises(FloatingPointError, match=r"trainer: non-finite loss at epoch 1, iteration 2 \(loss=nan, loss_pix=0.5\)"):
        _run_losses(bad_loss)
    # a term alone (the total can still read finite, e.g. with lambda = 0), in a decollated output
    bad_term = [finite, finite, [{"loss": torch.tensor(1.0), "loss_pix": float("inf")}, {"loss": torch.tensor(1.0)}]]
    with pytest.raises(FloatingPointError, match=r"source: non-finite loss at epoch 1, iteration 3 .*loss_pix=inf"):
        _run_losses(bad_term, StopOnNonFiniteLoss("source"))
    with pytest.raises(FloatingPointError, match=r"epoch 2, iteration 5 \(loss=-inf\)"):
        _run_losses([finite] * 4 + [{"loss": -math.inf}, finite])


# ------------------------------------------------------------------------------------------- TensorBoard maps


class RecordingWriter:
    """Stands in for ``SummaryWriter``: records ``add_image`` calls."""

    def __init__(self):
        self.images = []

    def add_image(self, tag, image, global_step=None, dataformats="CHW"):
        self.images.append((tag, np.asarray(image).copy(), global_step, dataformats))


def _map_batches(n_batches: int = 3, b: int = 2, size: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [
        {
            "image": torch.rand(b, 3, size, size, generator=g),
            "mask": (torch.rand(b, 1, size, size, generator=g) > 0.5).float(),
            "map": torch.rand(b, 1, size // 2, size // 2, generator=g),  # feature resolution: resized by the grid
        }
        for _ in range(n_batches)
    ]


def test_tensorboard_maps_first_images_once_per_epoch():
    batches = _map_batches()
    # the maps change with the epoch, as a model being trained would change them
    engine = Engine(lambda e, batch: {**batch, "map": batch["map"] * e.state.epoch / 2})
    writer = RecordingWriter()
    TensorBoardMapHandler(writer, "valpx/maps", lambda out: (out["image"], out["mask"], out["map"]), n_images=3).attach(
        engine
    )
    engine.run(batches, max_epochs=2)
    assert [(tag, step, fmt) for tag, _, step, fmt in writer.images] == [("valpx/maps", 1, "HWC"), ("valpx/maps", 2, "HWC")]
    # three rows: both images of the first batch and the first of the second, none of the third
    images = torch.cat([b["image"] for b in batches])[:3]
    masks = torch.cat([b["mask"] for b in batches])[:3]
    maps = torch.cat([b["map"] for b in batches])[:3]
    for epoch, (_, grid, _, _) in enumerate(writer.images, start=1):
        assert grid.shape == (3 * 8, 2 * 8, 3) and grid.dtype == np.uint8
        np.testing.assert_array_equal(grid, map_grid(images, masks, [maps * epoch / 2]))


# ----------------------------------------------------------------------------------------------- checkpoints


def _tiny_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 2)


def _saving_engine(net, scores: list[float]) -> Engine:
    """One iteration per epoch; the epoch sets the weights to the epoch number and reports ``scores[epoch-1]``."""

    def step(engine, _):
        with torch.no_grad():
            net.weight.fill_(float(engine.state.epoch))
        return {}

    engine = Engine(step)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(score=scores[e.state.epoch - 1])
    )
    return engine


def _saved_epoch(path) -> float:
    return float(torch.load(path, weights_only=True)["weight"][0, 0])


def _saver(tmp_path, net) -> AtomicCheckpointSaver:
    return AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"network": net}, save_key_metric=True, key_metric_name="score",
        key_metric_filename="best.pt", save_interval=1, interval_filename="last.pt",
    )


def test_atomic_saver_fixed_names_best_and_last(tmp_path):
    net = _tiny_net(0)
    engine = _saving_engine(net, [0.1, 0.5, 0.3])
    _saver(tmp_path, net).attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]  # no epoch-numbered files
    assert _saved_epoch(tmp_path / "best.pt") == 2.0 and _saved_epoch(tmp_path / "last.pt") == 3.0


def test_atomic_saver_failed_write_keeps_previous_best(tmp_path, monkeypatch):
    net = _tiny_net(0)
    engine = _saving_engine(net, [0.1, 0.5, 0.9])
    _saver(tmp_path, net).attach(engine)
    real_save = torch.save
    existed = []

    def failing_save(obj, f, *args, **kwargs):
        existed.append(sorted(p.name for p in tmp_path.glob("*.pt")))
        if engine.state.epoch == 3:  # a new best and a new last: half written, then the disk fails
            if hasattr(f, "write"):
                f.write(b"partial")
            else:  # a path: what a non-atomic saver passes
                Path(f).write_bytes(b"partial")
            raise OSError("disk full")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=3)
    monkeypatch.undo()
    # the fixed names were never deleted before a write: both files existed when epoch 3 started writing
    assert existed[-1] == ["best.pt", "last.pt"]
    # the previous complete files are intact, and no temporary file remains
    assert _saved_epoch(tmp_path / "best.pt") == 2.0 and _saved_epoch(tmp_path / "last.pt") == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def _selection_run(tmp_path, accuracy, scores, margin, selector=None, start_epoch=0):
    """Validations ``start_epoch+1 ..`` of ``scores`` (valpx) and ``accuracy`` (valcl), the network's weights set
    to the epoch number; returns the selector."""
    net = _tiny_net(0)
    engine = _saving_engine(net, scores)
    valcl = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: valcl.state.metrics.update(valcl_accuracy=accuracy[e.state.epoch - 1])
    )
    selector = selector or BLOCSelector(
        valcl, {"network": net}, tmp_path, "bloc.pt", metric_name="score", margin=margin, constant_accuracy=0.5
    )
    selector.accuracy_validator, selector.save_dict = valcl, {"network": net}
    selector.attach(engine)
    if start_epoch:
        engine.load_state_dict({"epoch": start_epoch, "max_epochs": len(scores), "epoch_length": 1})
    engine.run([0], max_epochs=len(scores))
    return selector


# epoch 1 localizes best but classifies at chance (a constant classifier gets 0.5 on valcl); epoch 2 loses to
# epoch 3 while the best accuracy is 0.92, wins again once epoch 4 (0.96) puts epoch 3 out of the margin, and
# loses for good to epoch 4 when epoch 5 reaches 1.0; epoch 6 localizes well but no longer classifies
SELECTION_ACCURACY = [0.5, 0.92, 0.9, 0.96, 1.0, 0.6]
SELECTION_SCORES = [0.99, 0.8, 0.85, 0.5, 0.4, 0.9]


@pytest.mark.parametrize("margin, chosen", [(0.05, [1, 2, 3, 2, 4, 4]), (None, [1, 1, 1, 1, 1, 1])])
def test_bloc_is_chosen_by_the_whole_runs_accuracy(tmp_path, margin, chosen):
    """The earliest validation is at chance with the highest PxAP: it is not the B-LOC checkpoint; the choice
    after each validation is the one the run would make if it ended there, so the file holds the after-run
    choice (a past epoch's weights included) and the record says how it was made."""
    history = []
    net = _tiny_net(0)
    engine = _saving_engine(net, SELECTION_SCORES)
    valcl = Engine(lambda e, b: None)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: valcl.state.metrics.update(valcl_accuracy=SELECTION_ACCURACY[e.state.epoch - 1]),
    )
    selector = BLOCSelector(
        valcl, {"network": net}, tmp_path, "bloc.pt", metric_name="score", margin=margin, constant_accuracy=0.5
    )
    selector.attach(engine)
    engine.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: history.append((selector.chosen.epoch, _saved_epoch(tmp_path / "bloc.pt")))
    )
    engine.run([0], max_epochs=len(SELECTION_SCORES))
    assert history == [(c, float(c)) for c in chosen]
    record = json.loads((tmp_path / "bloc_selection.json").read_text())
    assert record["chosen"]["epoch"] == chosen[-1] and record["constant_accuracy"] == 0.5
    assert record["best_accuracy"] == 1.0 and record["best_accuracy_epoch"] == 5 and len(record["validations"]) == 6
    if margin is not None:
        assert record["chosen"]["accuracy"] == 0.96 and record["chosen_eligible"]
        # only the validations that can still win keep their weights: 4 and 5 (6 is out of the margin)
        assert sorted(p.name for p in (tmp_path / "bloc_candidates").iterdir()) == ["epoch4.pt", "epoch5.pt"]
    assert not [p for p in tmp_path.rglob("*") if ".tmp." in p.name]


def test_bloc_selection_resumes_and_warns_when_nothing_classifies(tmp_path, caplog):
    first = _selection_run(tmp_path, SELECTION_ACCURACY, SELECTION_SCORES[:3], 0.05)
    restored = BLOCSelector(Engine(lambda e, b: None), {}, tmp_path, "bloc.pt", metric_name="score", margin=0.05,
                            constant_accuracy=0.5)  # fmt: skip
    restored.load_state_dict(first.state_dict())
    resumed = _selection_run(tmp_path, SELECTION_ACCURACY, SELECTION_SCORES, 0.05, restored, start_epoch=3)
    assert resumed.chosen.epoch == 4 and _saved_epoch(tmp_path / "bloc.pt") == 4.0
    assert [c.epoch for c in resumed.history] == [1, 2, 3, 4, 5, 6]

    with caplog.at_level(logging.WARNING):
        chance = _selection_run(tmp_path / "chance", [0.5, 0.5, 0.4], [0.9, 0.95, 0.99], 0.05)
    # nothing classifies above a constant classifier: the best accuracy's validation (ties: the higher score),
    # not the best score's (epoch 3)
    assert chance.chosen.epoch == 2 and "no validation classifies above a constant classifier" in caplog.text


def test_bloc_selector_needs_the_accuracy_first():
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(valpx_pxap=0.5))
    BLOCSelector(Engine(lambda e, b: None), {}, ".").attach(engine)
    with pytest.raises(RuntimeError, match="valcl_accuracy"):
        engine.run([0], max_epochs=1)
    with pytest.raises(ValueError, match="margin"):
        BLOCSelector(engine, {}, ".", margin=5)
    assert constant_accuracy([{"label": 0}, {"label": 1}, {"label": 1}]) == pytest.approx(2 / 3)


def test_init_from_source_loads_at_start(tmp_path):
    source = build_classifier("resnet18", "cam", 2, base_width=8).eval()
    torch.save(source.state_dict(), tmp_path / "source_bloc.pt")
    torch.manual_seed(5)
    net = build_pixelcam("resnet18", "cam", 2, base_width=8).eval()
    pixel_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("pixel_head.")}
    x = torch.rand(2, 3, 32, 32)
    handler = InitFromSource(torch.nn.DataParallel(net), tmp_path / "source_bloc.pt")
    engine = Engine(lambda e, batch: None)
    handler.attach(engine)
    with torch.no_grad():
        assert not torch.allclose(net(x)["cls"], source(x))  # nothing loaded at construction
    started = []
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(net(x)["cls"].detach()))
    engine.run([0], max_epochs=1)
    with torch.no_grad():
        torch.testing.assert_close(started[0], source(x))  # loaded before the first iteration
    for k, v in net.state_dict().items():
        if k.startswith("pixel_head."):
            torch.testing.assert_close(v, pixel_before[k])  # the pixel head keeps its own weights
    # a checkpoint of another network fails at start, naming the file
    other = build_classifier("resnet18", "cam", 3, base_width=8)
    torch.save(other.state_dict(), tmp_path / "three_classes.pt")
    engine = Engine(lambda e, batch: None)
    InitFromSource(net, tmp_path / "three_classes.pt").attach(engine)
    with pytest.raises(ValueError, match="three_classes.pt"):
        engine.run([0], max_epochs=1)
