"""Small builders the bundle configs and the evaluation steps call: data loaders over datalist items and the
paper's SGD optimiser. The engines themselves (trainers, evaluators, their handlers) are declared in the
bundle configs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import CacheDataset, DataLoader, Dataset

from monai_pixelcam.networks.wsol import unwrap_parallel

__all__ = ["build_dataloader", "sgd_optimizer"]


def build_dataloader(
    items: Sequence[dict],
    transform=None,
    batch_size: int = 16,
    shuffle: bool = False,
    num_workers: int = 0,
    cache: bool = True,
    drop_last: bool = False,
) -> DataLoader:
    """A MONAI ``DataLoader`` over datalist items.

    Args:
        items: datalist items (``image``, ``mask``, ``label``, ``id``).
        transform: a dictionary transform chain.
        cache: ``CacheDataset`` keeps the deterministic head of the chain (decode, resize) in memory, which
            dominates the cost of small histology tiles on CPU; the random tail runs every epoch.
        drop_last: drop the last incomplete batch, unless the split is smaller than one batch (which would
            otherwise give an empty loader and silently train nothing).

    Raises:
        ValueError: ``items`` is empty.
    """
    if not items:
        raise ValueError("build_dataloader: the split is empty")
    dataset = CacheDataset(list(items), transform, progress=False) if cache else Dataset(list(items), transform)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last and len(dataset) >= batch_size,
    )


def sgd_optimizer(
    network: torch.nn.Module,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = True,
    head_lr_mult: float = 10.0,
    layer_decay: float | None = None,
) -> torch.optim.SGD:
    """SGD as in the paper: momentum 0.9, Nesterov, weight decay 1e-4, heads at ``head_lr_mult`` x ``lr``.

    The groups come from the network's ``param_groups``, which leave out frozen parameters (the two-step
    variant); a ``DistributedDataParallel`` wrapper is looked through. ``layer_decay`` (in (0, 1]; a snapshot
    encoder only) splits the encoder's group by depth, block ``i`` of ``L`` at ``lr * layer_decay ** (L - i)``
    (:func:`~monai_pixelcam.networks.snapshot.layer_decay_param_groups`); None: one encoder group.
    """
    if layer_decay is not None:
        if not 0.0 < float(layer_decay) <= 1.0:
            raise ValueError(f"layer_decay must lie in (0, 1] or be null, got {layer_decay}")
        from monai_pixelcam.networks.snapshot import layer_decay_param_groups

        groups = layer_decay_param_groups(network, lr, head_lr_mult, float(layer_decay))
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    groups = unwrap_parallel(network).param_groups(lr, head_lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
