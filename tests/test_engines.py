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
