"""The engines as the bundle declares them: resuming a killed run, stopping on a non-finite loss, the CAM store
a trained bundle leaves behind."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, TINY_BUNDLE
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from monai_pixelcam.cams import CAMStore, StaleCAMStoreError
from monai_pixelcam.data import load_datalist


def _workflow(root, datalist, **overrides) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type=None, logging_file=False, bundle_root=str(root),
        datalist=str(datalist), **{**TINY_BUNDLE, **overrides},
    )
    workflow.initialize()
    return workflow


def test_killed_run_resumes_from_last_checkpoint(tmp_path, tiny_glas):
    trainer = _workflow(tmp_path, tiny_glas, source_epochs=3).parser.get_parsed_content("source#train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    trainer.run()
    last = tmp_path / "models" / "source_last.pt"
    saved = torch.load(last, weights_only=False)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"]  # one epoch done
    assert saved["bloc_selector"]["history"], "the B-LOC selection travels with the resume checkpoint"
    first = saved["bloc_selector"]["history"]

    trainer = _workflow(tmp_path, tiny_glas, source_epochs=3).parser.get_parsed_content("source#train#trainer")
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: epochs.append(engine.state.epoch))
    trainer.run()
    assert epochs == [2, 3]  # resumed after epoch 1 and finished
    saved = torch.load(last, weights_only=False)
    assert saved["trainer"]["iteration"] == 3 * saved["trainer"]["epoch_length"]
    assert saved["lr_scheduler"]["last_epoch"] == 3 and saved["optimizer"]["state"]
    # the resumed selection judged new epochs together with epoch 1's validation instead of starting empty
    history = saved["bloc_selector"]["history"]
    assert history[: len(first)] == first and {v["epoch"] for v in history} == {1, 2, 3}
    # and the resumed run is the run: the weights of an uninterrupted one, bit for bit
    _workflow(tmp_path / "straight", tiny_glas, source_epochs=3).parser.get_parsed_content("source#train#trainer").run()
    _assert_same_weights(tmp_path / "straight" / "models" / "source_last.pt", last)


def _assert_same_weights(a, b) -> None:
    wa, wb = torch.load(a, weights_only=False)["network"], torch.load(b, weights_only=False)["network"]
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_pixelcam_stage_is_the_same_resumed_or_with_workers(tmp_path, tiny_glas):
    """Every random stream of the PixelCAM stage (each item's augmentation, the epoch order, the pixel seeds drawn
    at each iteration, the pixel head's initial weights) depends on the seed, the epoch and the iteration
    alone: a run killed after epoch 1 and resumed, and a run loading with 2 worker processes, end with the
    weights of an uninterrupted single-process run."""
    import shutil

    source = tmp_path / "source"
    workflow = _workflow(source, tiny_glas, source_epochs=1)
    for step in ("train_source", "store_cams"):
        workflow.parser.get_parsed_content(step)
    runs = {}
    for name in ("straight", "resumed", "workers"):
        shutil.copytree(source, tmp_path / name)
        runs[name] = tmp_path / name / "models" / "pixelcam_last.pt"
    # 2 + 2 pixel seeds per image, so that every draw is a real choice on the tiny 7 x 7 maps
    overrides = {"source_epochs": 1, "pixelcam_epochs": 3, "seeder#n_fg": 2, "seeder#n_bg": 2}
    _workflow(tmp_path / "straight", tiny_glas, **overrides).parser.get_parsed_content("train#trainer").run()
    trainer = _workflow(tmp_path / "resumed", tiny_glas, **overrides).parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    trainer.run()
    _workflow(tmp_path / "resumed", tiny_glas, **overrides).parser.get_parsed_content("train#trainer").run()
    workers = {**overrides, "num_workers": 2}
    _workflow(tmp_path / "workers", tiny_glas, **workers).parser.get_parsed_content("train#trainer").run()
    for name in ("resumed", "workers"):
        _assert_same_weights(runs["straight"], runs[name])


def test_non_finite_loss_stops_with_clear_error(tmp_path, tiny_glas):
    exploding = "$lambda pred, target: torch.nn.functional.cross_entropy(pred, target) * float('inf')"
    workflow = _workflow(tmp_path, tiny_glas, **{"source#loss": exploding})
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1, iteration 1"):
        workflow.parser.get_parsed_content("source#train#trainer").run()
    assert not (tmp_path / "models" / "source_last.pt").exists(), "no checkpoint of a diverged epoch"


def test_trained_bundle_cam_store_is_tied_to_its_checkpoint(trained_bundle, tiny_glas, tmp_path):
    models = trained_bundle / "models"
    store = CAMStore.open(models / "cams", checkpoint_path=models / "source_bloc.pt", method="auto")
    train = load_datalist(tiny_glas)["train"]
    assert set(store.ids) == {it["id"] for it in train}
    cam = store.load(train[0]["id"])
    side = TINY_BUNDLE["image_size"] // 8  # the whole image at the network input size, at stride 8
    assert cam.shape == (1, side, side) and 0 <= cam.min() and cam.max() <= 1
    other = {k: v + 1e-3 for k, v in torch.load(models / "source_bloc.pt", weights_only=True).items()}
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(models / "cams", checkpoint_path=tmp_path / "other.pt", method="auto")
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(models / "cams", checkpoint_path=models / "source_bloc.pt", method="layercam")
