"""Training data whose randomness depends on the seed, the epoch and the item alone.

A random augmentation normally draws from a stream: the transform's random state in the main process, or one
reseeded per worker by the data loader. What an item gets then depends on ``num_workers``, on which worker
loads it, and on how often torch's global generator was used before (every data loader iterator draws its
base seed from it). Here the sampler gives every item of every epoch its own seed, a hash of ``(seed, epoch,
index)``, and the dataset reseeds its transform with it before loading the item: the same command gives the
same batches with any ``num_workers``, and a run resumed at epoch ``k`` gets the batches an uninterrupted run
gets there (MONAI's workflows call ``set_epoch`` on a ``DistributedSampler`` at every epoch start).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import DistributedSampler

__all__ = ["item_seed", "ItemSeedSampler", "ItemSeededDataset"]


def item_seed(*keys: int) -> int:
    """A seed in ``[0, 2**32)`` from integer keys (e.g. ``seed, epoch, index``), well mixed by NumPy's
    ``SeedSequence``: neighbouring keys give unrelated seeds."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class ItemSeedSampler(DistributedSampler):
    """torch's ``DistributedSampler`` (this process's share of a permutation drawn from ``seed + epoch``) that
    yields ``(index, item_seed(seed, epoch, index))`` pairs for :class:`ItemSeededDataset`.

    Without a process group it is the whole dataset on one replica. Each epoch's order and each item's seed
    depend only on ``seed``, the epoch (``set_epoch``) and the index.

    Args:
        dataset: the dataset (its length).
        seed: the run's random seed.
        shuffle: a new permutation every epoch.
        drop_last: as ``DistributedSampler`` (drop the tail instead of padding to a multiple of the replicas).
        num_replicas, rank: default: the running process group's, else 1 and 0.
    """

    def __init__(
        self,
        dataset,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        grouped = dist.is_available() and dist.is_initialized()
        num_replicas = (dist.get_world_size() if grouped else 1) if num_replicas is None else num_replicas
        rank = (dist.get_rank() if grouped else 0) if rank is None else rank
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=drop_last
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield index, item_seed(self.seed, self.epoch, index)


class ItemSeededDataset(TorchDataset):
    """A MONAI dataset (``Dataset``, ``CacheDataset``, ...) whose random transform is reseeded for every item:
    ``dataset[(index, seed)]`` is item ``index`` transformed under ``transform.set_random_state(seed)``.

    Args:
        dataset: a dataset with a ``transform`` that has ``set_random_state`` (a MONAI ``Compose``).
    """

    def __init__(self, dataset) -> None:
        if not hasattr(getattr(dataset, "transform", None), "set_random_state"):
            raise TypeError(f"{type(dataset).__name__} has no transform with set_random_state to reseed")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        if not (isinstance(key, tuple) and len(key) == 2):
            raise TypeError(
                f"ItemSeededDataset takes (index, seed) pairs from an ItemSeedSampler, got {key!r}: give its data "
                "loader sampler=ItemSeedSampler(dataset, seed)"
            )
        index, seed = key
        self.dataset.transform.set_random_state(seed=seed)
        return self.dataset[index]
