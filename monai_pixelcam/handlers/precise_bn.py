"""Recompute BatchNorm population statistics before a model is validated (and its checkpoint chosen)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import ignite.distributed as idist
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_pixelcam.networks.wsol import unwrap_parallel

__all__ = ["PreciseBatchNorm", "recompute_batchnorm"]


def _batch_images(batch) -> torch.Tensor:
    if isinstance(batch, Mapping):
        if "image" not in batch:
            raise KeyError(f"PreciseBatchNorm: batch has no 'image' key (keys: {sorted(map(str, batch))})")
        batch = batch["image"]
    return torch.as_tensor(batch)


def recompute_batchnorm(
    network: nn.Module,
    data_loader,
    num_batches: int | None = None,
    images_of: Callable = _batch_images,
) -> int:
    """Replace the running mean and variance of every BatchNorm layer of ``network`` by their average over
    ``data_loader`` (PyTorch's cumulative mode, ``momentum=None``), as "precise BN" does (Wu and Johnson,
    "Rethinking Batch in BatchNorm", 2021).

    Only the BatchNorm statistics change: no parameter, no gradient, and every module's train/eval flag is
    restored. Layers that stay in eval mode under ``network.train()`` (a frozen backbone) keep their
    statistics. Under ``ignite.distributed`` with several processes, each rank averages its own shard and
    the statistics are then averaged over ranks.

    Args:
        network: the model (``DistributedDataParallel`` is unwrapped).
        data_loader: iterable of batches, dicts with ``image`` (``B x C x H x W``) or image tensors.
        num_batches: use at most this many batches (None: the whole loader).
        images_of: batch -> input tensor of ``network``.

    Returns:
        the number of images seen on this rank.
    """
    # not torch.optim.swa_utils.update_bn: it reads the whole loader of tensor batches, resets frozen layers too and
    # does not average over ranks
    network = unwrap_parallel(network)
    batchnorms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    layers = [m for m in network.modules() if isinstance(m, batchnorms) and m.track_running_stats]
    if not layers:
        return 0
    modes = [(m, m.training) for m in network.modules()]
    momenta = [m.momentum for m in layers]
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    seen = 0
    try:
        network.train()
        updated = [m for m in layers if m.training]
        for m in updated:
            m.reset_running_stats()
            m.momentum = None
        with torch.no_grad():
            for i, batch in enumerate(data_loader):
                if num_batches is not None and i >= num_batches:
                    break
                images = images_of(batch).to(device=device, dtype=torch.float32)
                network(images)
                seen += images.shape[0]
        if seen == 0:
            raise ValueError("PreciseBatchNorm: the data loader yielded no batch; BatchNorm statistics were reset")
        if idist.get_world_size() > 1:
            for m in updated:
                m.running_mean.copy_(idist.all_reduce(m.running_mean.clone()) / idist.get_world_size())
                m.running_var.copy_(idist.all_reduce(m.running_var.clone()) / idist.get_world_size())
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for module, training in modes:
            module.training = training
    return seen


class PreciseBatchNorm:
    """Ignite handler: before an evaluator runs, recompute ``network``'s BatchNorm statistics over
    ``data_loader`` (see :func:`recompute_batchnorm`).

    Why: with few iterations per epoch and a fast-moving network (training from scratch at the paper's
    learning rates), BatchNorm's exponential running averages lag behind the weights. The model then
    classifies perfectly in train mode and at chance in eval mode, and every validation figure, the B-LOC
    / B-CL checkpoint choice and the stored CAMs inherit the error. Recomputed statistics are those of the
    weights being validated; the checkpoints the evaluators save carry them.

    Attach the same instance to every validator of a trainer (``attach(evaluator)``, event ``STARTED``):
    attaching to the evaluators, not the trainer, runs it before validation whatever the handler order, and
    the statistics are recomputed once per trainer epoch (the evaluators' global epoch), not once per
    validator.

    Args:
        network: the model the evaluators validate (the training network).
        data_loader: training images under the evaluation transforms (the distribution the model is
            evaluated and its CAMs stored on), shuffled so that ``num_batches`` of them are a fair sample.
        num_batches: at most this many batches per recomputation (None: all).
        enabled: False attaches nothing (a config switch: the same handler object is listed in several
            evaluators' handler lists, where a ``_disabled_`` reference would leave a None behind).
    """

    def __init__(
        self, network: nn.Module, data_loader, num_batches: int | None = None, enabled: bool = True
    ) -> None:
        if num_batches is not None and int(num_batches) < 1:
            raise ValueError(f"PreciseBatchNorm: num_batches must be >= 1 or None, got {num_batches}")
        self.network = network
        self.data_loader = data_loader
        self.num_batches = None if num_batches is None else int(num_batches)
        self.enabled = bool(enabled)
        self._done_for: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled and not engine.has_event_handler(self, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch == self._done_for:
            return
        seen = recompute_batchnorm(self.network, self.data_loader, self.num_batches)
        self._done_for = epoch
        logging.getLogger(engine.logger.name).info(f"BatchNorm statistics recomputed over {seen} images")
