"""Source and PixelCAM engines on tiny synthetic data: training, validation, checkpoints, CAM store, resume."""

from __future__ import annotations

import glob

import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from monai_pixelcam.cams import CAMStore, LoadStoredCAMd, StaleCAMStoreError
from monai_pixelcam.data import load_datalist
from monai_pixelcam.engines import (
    CAMInferer,
    ClassifierInferer,
    DictTargetPrepareBatch,
    PixelCAMInferer,
    build_dataloader,
    build_evaluator,
    build_trainer,
    evaluate_localization,
    last_checkpoint_path,
    sgd_optimizer,
    store_cams,
)
from monai_pixelcam.losses import PixelCAMLoss
from monai_pixelcam.networks import build_classifier, build_pixelcam, load_checkpoint
from monai_pixelcam.seeding import ThresholdSeeder
from monai_pixelcam.transforms import eval_transforms, train_transforms

SIZE = 48


def _tags(log_dir) -> set[str]:
    tags = set()
    for f in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        acc = EventAccumulator(f)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])
    return tags


def _source(tmp_path, datalist, epochs=4, lr=0.02, resume=True, handlers=(), loss=None):
    torch.manual_seed(0)
    net = build_classifier("resnet18", "cam", 2, base_width=8)
    writer = SummaryWriter(str(tmp_path / "tb_source"))
    valcl = build_dataloader(datalist["valcl"], eval_transforms(SIZE, with_mask=False), batch_size=8)
    valpx = build_dataloader(datalist["valpx"], eval_transforms(SIZE), batch_size=8)
    validators = [
        build_evaluator(net, valcl, ClassifierInferer(), "valcl", localization=False, checkpoint_dir=tmp_path,
                        checkpoint_name="source_bcl", summary_writer=writer),
        build_evaluator(net, valpx, CAMInferer("cam"), "valpx", checkpoint_dir=tmp_path,
                        checkpoint_name="source_bloc", summary_writer=writer, tensorboard_images=2),
    ]
    train = build_dataloader(datalist["train"], train_transforms(56, SIZE, with_mask=False), batch_size=8, shuffle=True)
    opt = sgd_optimizer(net, lr=lr)
    trainer = build_trainer(
        net, loss or torch.nn.CrossEntropyLoss(), train, opt, epochs, tmp_path, "source",
        lr_scheduler=torch.optim.lr_scheduler.StepLR(opt, 3, 0.5), validators=validators, summary_writer=writer,
        progress=False, resume=resume, handlers=handlers,
    )
    return net, trainer, writer


def test_source_training_checkpoints_and_cam_store(tmp_path, tiny_glas):
    datalist = load_datalist(tiny_glas)
    net, trainer, writer = _source(tmp_path, datalist, epochs=6)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    writer.close()
    n = len(losses) // 3
    assert sum(losses[-n:]) / n < sum(losses[:n]) / n, losses  # the loss decreases
    for name in ("source_bloc", "source_bcl", "source_last"):
        assert (tmp_path / f"{name}.pt").is_file()
    assert not list(tmp_path.glob("tmp*")), "atomic saving leaves no temporary file"
    tags = _tags(tmp_path / "tb_source")
    assert {"loss", "valcl_accuracy", "valpx_pxap", "valpx_accuracy", "valpx/maps"} <= tags

    reloaded = load_checkpoint(build_classifier("resnet18", "cam", 2, base_width=8), tmp_path / "source_bloc.pt")
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())

    loader = build_dataloader(datalist["train"], eval_transforms(SIZE), batch_size=8, cache=False)
    store = store_cams(reloaded, tmp_path / "source_bloc.pt", loader, tmp_path / "cams", "gradcampp")
    assert set(store.ids) == {it["id"] for it in datalist["train"]}
    cam = CAMStore.open(tmp_path / "cams", checkpoint_path=tmp_path / "source_bloc.pt", method="gradcampp").load(
        datalist["train"][0]["id"]
    )
    assert cam.shape == (1, SIZE // 8, SIZE // 8) and 0 <= cam.min() and cam.max() <= 1
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(tmp_path / "cams", checkpoint_path=tmp_path / "source_bcl.pt", method="gradcampp")
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(tmp_path / "cams", checkpoint_path=tmp_path / "source_bloc.pt", method="layercam")


def test_pixelcam_training_logs_terms_and_pxap(tmp_path, tiny_glas):
    datalist = load_datalist(tiny_glas)
    net, trainer, writer = _source(tmp_path, datalist, epochs=2)
    trainer.run()
    writer.close()
    ckpt = tmp_path / "source_bloc.pt"
    store_cams(net, ckpt, build_dataloader(datalist["train"], eval_transforms(SIZE), 8, cache=False), tmp_path / "cams", "cam")
    store = CAMStore.open(tmp_path / "cams", checkpoint_path=ckpt, method="cam")

    pnet = build_pixelcam("resnet18", "cam", 2, base_width=8).load_source(net)
    writer = SummaryWriter(str(tmp_path / "tb_pixelcam"))
    train = build_dataloader(
        datalist["train"],
        train_transforms(56, SIZE, with_mask=False, with_cam=True, cam_loader=LoadStoredCAMd(store=store)),
        batch_size=8, shuffle=True,
    )
    valpx = build_dataloader(datalist["valpx"], eval_transforms(SIZE), batch_size=8)
    validator = build_evaluator(pnet, valpx, PixelCAMInferer(), "valpx", checkpoint_dir=tmp_path,
                                checkpoint_name="pixelcam_bloc", summary_writer=writer, tensorboard_images=2)
    loss = PixelCAMLoss(ThresholdSeeder(n_fg=4, n_bg=4))
    trainer = build_trainer(
        pnet, loss, train, sgd_optimizer(pnet, lr=0.01), 2, tmp_path, "pixelcam", validators=[validator],
        summary_writer=writer, progress=False, prepare_batch=DictTargetPrepareBatch(("label", "cam")),
    )
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    writer.close()
    for out in outputs:
        assert out["loss"].item() == pytest.approx(out["loss_cls"] + out["loss_pix"], rel=1e-4)
    assert {"loss", "loss_cls", "loss_pix", "valpx_pxap", "valpx/maps"} <= _tags(tmp_path / "tb_pixelcam")
    assert 0.0 <= validator.state.metrics["valpx_pxap"] <= 1.0

    test = build_dataloader(datalist["test"], eval_transforms(SIZE), batch_size=8)
    figures = evaluate_localization(pnet, PixelCAMInferer(), valpx, test, datalist["classes"])
    assert 0 <= figures["pxap"] <= 100 and 0 <= figures["threshold"] <= 1
    assert {"accuracy", "pxap_benign", "pxap_malignant", "dice", "miou", "dice@0.5", "miou@0.5"} <= set(figures)


def test_killed_run_resumes_from_last_checkpoint(tmp_path, tiny_glas):
    datalist = load_datalist(tiny_glas)
    net, trainer, writer = _source(tmp_path, datalist, epochs=3)

    def kill_after_first_epoch(engine):
        if engine.state.epoch == 1:
            engine.terminate()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, kill_after_first_epoch)
    trainer.run()
    writer.close()
    saved = torch.load(last_checkpoint_path(tmp_path, "source"), weights_only=True)
    assert saved["trainer"]["iteration"] == saved["trainer"]["epoch_length"]  # one epoch done
    best_before = saved["best_tracker_1"]

    net, trainer, writer = _source(tmp_path, datalist, epochs=3)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run()
    writer.close()
    assert epochs == [2, 3]  # resumed after epoch 1 and finished
    assert trainer.state.epoch == 3
    saved = torch.load(last_checkpoint_path(tmp_path, "source"), weights_only=True)
    assert saved["trainer"]["iteration"] == 3 * saved["trainer"]["epoch_length"]
    assert "optimizer" in saved and saved["lr_scheduler"]["last_epoch"] == 3
    assert best_before["_saved"], "the B-LOC tracker state travels with the resume checkpoint"


def test_non_finite_loss_stops_with_clear_error(tmp_path, tiny_glas):
    datalist = load_datalist(tiny_glas)
    def exploding(pred, target):
        return torch.nn.functional.cross_entropy(pred, target) * float("inf")

    net, trainer, writer = _source(tmp_path, datalist, epochs=2, loss=exploding)
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 1, iteration 1"):
        trainer.run()
    writer.close()
