"""Builders for the MONAI/Ignite engines of both stages; the bundle configs call these.

One trainer builder serves the source WSOL classifier (CE on image labels) and PixelCAM (CE + partial CE on
pixel seeds): the two differ only in network, loss, prepare_batch and validation inferers, never by a branch
on a method name here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar
from ignite.metrics import Accuracy
from monai.data import CacheDataset, DataLoader, Dataset, DistributedSampler
from monai.engines import PrepareBatchDefault, SupervisedEvaluator, SupervisedTrainer
from monai.handlers import CheckpointLoader, LrScheduleHandler, StatsHandler, TensorBoardStatsHandler, ValidationHandler
from torch.utils.tensorboard import SummaryWriter

from monai_pixelcam.engines.prepare_batch import DictTargetPrepareBatch
from monai_pixelcam.handlers.checkpoint import AtomicCheckpointSaver
from monai_pixelcam.handlers.loss_terms import LossTermsHandler, loss_terms_transform
from monai_pixelcam.handlers.nan_guard import StopOnNonFiniteLoss
from monai_pixelcam.handlers.tensorboard import TensorBoardMapHandler
from monai_pixelcam.metrics import PxAP, from_engine_roi
from monai_pixelcam.networks.wsol import unwrap_parallel

__all__ = [
    "build_dataloader",
    "sgd_optimizer",
    "build_trainer",
    "build_evaluator",
    "roi_transform",
    "last_checkpoint_path",
]


def build_dataloader(
    items: Sequence[dict] | torch.utils.data.Dataset,
    transform=None,
    batch_size: int = 16,
    shuffle: bool = False,
    num_workers: int = 0,
    cache: bool = True,
    distributed: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    """A MONAI ``DataLoader`` over datalist items.

    Args:
        items: datalist items (``image``, ``mask``, ``label``, ``id``; ``cam`` added by the transform), or a
            ready dataset (then ``transform`` and ``cache`` are not used).
        transform: a dictionary transform chain (see :mod:`monai_pixelcam.transforms.pipelines`).
        cache: ``CacheDataset`` keeps the deterministic head of the chain (decode, resize) in memory, which
            dominates the cost of small histology tiles on CPU; the random tail runs every epoch.
        distributed: shard with a ``DistributedSampler`` (one shard per rank, reshuffled by epoch via
            ``set_epoch``, which MONAI's trainer calls). Shuffled (training) shards are padded to equal
            length, as DDP needs the same number of iterations on every rank; unshuffled (evaluation) shards
            split the items exactly, so that no image counts twice in the ranks' reduced metrics.
    """
    if isinstance(items, torch.utils.data.Dataset):
        dataset = items
    elif not items:
        raise ValueError("build_dataloader: the split is empty")
    else:
        dataset = CacheDataset(list(items), transform, progress=False) if cache else Dataset(list(items), transform)
    sampler = DistributedSampler(dataset, even_divisible=shuffle, shuffle=shuffle) if distributed else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        # a split smaller than one batch would otherwise give an empty loader and silently train nothing
        drop_last=drop_last and len(dataset) >= batch_size,
    )


def sgd_optimizer(
    network: torch.nn.Module,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = True,
    head_lr_mult: float = 10.0,
) -> torch.optim.SGD:
    """SGD as in the paper: momentum 0.9, Nesterov, weight decay 1e-4, heads at ``head_lr_mult`` x ``lr``.

    The groups come from the network's ``param_groups``, which leave out frozen parameters (the two-step
    variant).
    """
    groups = unwrap_parallel(network).param_groups(lr, head_lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def last_checkpoint_path(output_dir: str | os.PathLike, name: str) -> Path:
    """Where :func:`build_trainer` keeps the end-of-epoch checkpoint of run ``name`` (model, optimiser,
    scheduler, trainer state, best-metric trackers) that a killed run resumes from."""
    return Path(output_dir) / f"{name}_last.pt"


def _validate_last_epoch(trainer: SupervisedTrainer, validators, val_interval: int) -> None:
    if trainer.state.epoch % val_interval and not trainer.should_terminate:
        for validator in validators:
            validator.run(trainer.state.epoch)


def build_trainer(
    network: torch.nn.Module,
    loss_function,
    train_loader,
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    output_dir: str | os.PathLike,
    name: str,
    *,
    device: str | torch.device = "cpu",
    lr_scheduler=None,
    validators: Sequence[SupervisedEvaluator] = (),
    val_interval: int = 1,
    prepare_batch=None,
    summary_writer: SummaryWriter | None = None,
    resume: bool = True,
    progress: bool = True,
    handlers: Sequence = (),
    amp: bool = False,
    inferer=None,
    initializer=None,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` with the project's handlers attached.

    Handlers: loss terms into the output (``loss``, plus ``loss_cls``/``loss_pix`` when the loss exposes
    ``last_terms``), ``StatsHandler`` and ``TensorBoardStatsHandler`` every iteration, a
    ``ValidationHandler`` per validator every ``val_interval`` epochs, ``LrScheduleHandler`` (epoch level),
    a stop on non-finite loss, Ignite's ``ProgressBar``, and an atomic end-of-epoch checkpoint
    ``<name>_last.pt`` that the same call resumes from when ``resume`` is set and the file exists (network,
    optimiser, scheduler, epoch, and the validators' best-metric trackers, so B-LOC/B-CL selection carries on).
    Only rank 0 writes files and logs.

    Args:
        network: the model; a ``DistributedDataParallel`` wrapper is fine.
        loss_function: ``loss(pred, target)``; ``pred`` is the network output and ``target`` what
            ``prepare_batch`` returns (a label tensor, or a dict for PixelCAM).
        train_loader: iterable of collated batch dicts.
        output_dir: folder for ``<name>_last.pt``.
        name: run name used in file names and logs (e.g. ``"source"``, ``"pixelcam"``).
        validators: evaluators from :func:`build_evaluator`, run every ``val_interval`` epochs.
        prepare_batch: default MONAI's ``PrepareBatchDefault`` giving ``(image, label)``; PixelCAM uses
            ``DictTargetPrepareBatch(("label", "cam"))``.
        handlers: extra Ignite handlers with an ``attach(engine)`` method.
        inferer: MONAI inferer of the training forward pass (default ``SimpleInferer``).
        initializer: a handler that sets the starting weights at ``STARTED`` (e.g.
            :class:`~monai_pixelcam.handlers.InitFromSource`), attached before the resume loader so that a
            resumed run keeps the weights of its last checkpoint.
    """
    rank0 = idist.get_rank() == 0
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        prepare_batch=prepare_batch or PrepareBatchDefault(),
        amp=amp,
        inferer=inferer,
        decollate=False,  # predictions are dicts of tensors; nothing downstream needs per-item lists
    )
    trainer.logger = logging.getLogger(name)  # Ignite's default logger is shared by every engine of a class
    if hasattr(loss_function, "last_terms"):
        LossTermsHandler(loss_function).attach(trainer)
    StopOnNonFiniteLoss(name).attach(trainer)
    if lr_scheduler is not None:
        LrScheduleHandler(lr_scheduler, print_lr=False, epoch_level=True).attach(trainer)
    for validator in validators:
        ValidationHandler(interval=val_interval, validator=validator, epoch_level=True).attach(trainer)
    if validators and val_interval > 1:
        # B-LOC / B-CL must exist after any number of epochs: validate the last one too
        trainer.add_event_handler(Events.COMPLETED, _validate_last_epoch, validators, val_interval)
    if rank0:
        StatsHandler(tag_name="loss", output_transform=loss_terms_transform).attach(trainer)
        if summary_writer is not None:
            TensorBoardStatsHandler(summary_writer, output_transform=loss_terms_transform).attach(trainer)
        if progress:
            ProgressBar(persist=True, desc=name).attach(trainer, output_transform=loss_terms_transform)
    state = {"network": network, "optimizer": optimizer, "trainer": trainer}
    if lr_scheduler is not None:
        state["lr_scheduler"] = lr_scheduler
    for i, validator in enumerate(validators):
        tracker = getattr(validator, "best_checkpoint", None)
        if tracker is not None:
            state[f"best_tracker_{i}"] = tracker
    if initializer is not None:
        initializer.attach(trainer)
    last = last_checkpoint_path(output_dir, name)
    if resume and last.exists():
        CheckpointLoader(load_path=str(last), load_dict=state, map_location=torch.device(device)).attach(trainer)
        logging.getLogger(name).info(f"resuming from {last}")
    if rank0:
        AtomicCheckpointSaver(
            save_dir=str(output_dir),
            save_dict=state,
            save_interval=1,
            n_saved=1,
            interval_filename=last.name,
        ).attach(trainer)
    for handler in handlers:
        handler.attach(trainer)
    return trainer


def roi_transform(excluded_labels: Sequence[int] = ()):
    """Output transform ``(maps, masks)`` of a :func:`build_evaluator` engine, leaving out the images whose
    label is in ``excluded_labels`` (classes without a region of interest, or all classes but one for a
    per-class figure)."""
    return from_engine_roi(("pred", "map"), ("label", "mask"), None, ("label", "label"), list(excluded_labels))


def _accuracy_transform(output: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return output["pred"]["cls"], output["label"]["label"]


def _maps_for_tensorboard(output: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return output["image"], output["label"]["mask"], output["pred"]["map"]


def build_evaluator(
    network: torch.nn.Module,
    data_loader,
    inferer,
    name: str,
    *,
    device: str | torch.device = "cpu",
    localization: bool = True,
    negative_classes: Sequence[int] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_name: str | None = None,
    summary_writer: SummaryWriter | None = None,
    tensorboard_images: int = 0,
    extra_metrics: dict | None = None,
    handlers: Sequence = (),
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` for one split, reporting ``<name>_accuracy`` and, with ``localization``,
    ``<name>_pxap`` (images of ``negative_classes`` left out, as the benchmark does).

    The key metric is PxAP with ``localization`` (B-LOC selection on valpx), accuracy otherwise (B-CL
    selection on valcl). With ``checkpoint_dir`` and ``checkpoint_name`` the network's state dict is saved
    atomically to ``<checkpoint_dir>/<checkpoint_name>.pt`` whenever the key metric improves; the saver's
    tracker is ``evaluator.best_checkpoint`` (the trainer stores it for resuming) and the PxAP handler is
    ``evaluator.pxap_handler``.

    Args:
        network: the model being trained (``DistributedDataParallel`` is unwrapped for saving).
        data_loader: a non-shuffled loader over the split; items need ``mask`` when ``localization``.
        inferer: an inferer of :mod:`monai_pixelcam.engines.inferers` returning ``{"cls", "map"}``.
        name: split name used as metric prefix and TensorBoard tag (``valcl``, ``valpx``, ``test``).
        tensorboard_images: with ``summary_writer`` and ``localization``, write image | mask | map rows of the
            first N images at each validation.
        extra_metrics: more Ignite metrics by name (e.g. per-class PxAP, Dice at a threshold).
        handlers: extra handlers with ``attach(engine)``.
    """
    target_keys = ("label", "mask") if localization else ("label",)
    accuracy = {f"{name}_accuracy": Accuracy(output_transform=_accuracy_transform)}
    pxap = PxAP(output_transform=roi_transform(negative_classes)) if localization else None
    if localization:
        key_metric = {f"{name}_pxap": pxap}
        additional = {**accuracy, **(extra_metrics or {})}
    else:
        key_metric, additional = accuracy, extra_metrics
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network,
        inferer=inferer,
        prepare_batch=DictTargetPrepareBatch(target_keys, labels_to_inferer=True),
        key_val_metric=key_metric,
        additional_metrics=additional,
        decollate=False,
    )
    evaluator.logger = logging.getLogger(name)
    evaluator.pxap_handler = pxap  # its metric keeps the pooled histogram: PR curves are drawn from it
    evaluator.best_checkpoint = None
    if idist.get_rank() == 0:
        StatsHandler(iteration_log=False).attach(evaluator)
        if summary_writer is not None:
            TensorBoardStatsHandler(summary_writer, iteration_log=False).attach(evaluator)
            if localization and tensorboard_images > 0:
                TensorBoardMapHandler(
                    summary_writer, f"{name}/maps", _maps_for_tensorboard, n_images=tensorboard_images
                ).attach(evaluator)
        if checkpoint_dir is not None and checkpoint_name is not None:
            saver = AtomicCheckpointSaver(
                save_dir=str(checkpoint_dir),
                save_dict={"network": unwrap_parallel(network)},
                save_key_metric=True,
                key_metric_filename=f"{checkpoint_name}.pt",
                key_metric_n_saved=1,
            )
            saver.attach(evaluator)
            evaluator.best_checkpoint = saver._key_metric_checkpoint
    for handler in handlers:
        handler.attach(evaluator)
    return evaluator
