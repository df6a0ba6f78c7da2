"""Multi-process training (``torchrun`` + DistributedDataParallel) of the bundle pipeline.

``bundles/pixelcam/configs/multi_gpu_train.json``, merged after ``train.json``, uses these helpers:

- :func:`init_distributed` starts the process group (NCCL on GPUs, gloo on CPU) and :func:`wrap_ddp` wraps the
  two trainers' networks, while their train loaders get a ``DistributedSampler``;
- validation runs on every rank, each over its shard of valcl / valpx: the Ignite and MONAI metrics then
  all-reduce (all-gather) their counts, so every rank computes the same, exact figure and agrees on the best
  epoch, while only rank 0 writes checkpoints and TensorBoard (:func:`rank0_summary_writer`). Validating on
  rank 0 alone is no option: ``Accuracy.compute`` and ``Cumulative.get_buffer`` are collectives whenever a
  process group exists, so rank 0 would wait for ranks that never call them;
- the steps between the engines run on rank 0: the rank-aware twins below keep the names and signatures of
  :func:`~monai_pixelcam.data.prepare_datalist` (rank 0 generates or converts the data once, the others
  receive its datalist path), :func:`~monai_pixelcam.engines.pipeline.store_cams` (the others wait),
  :func:`~monai_pixelcam.engines.pipeline.evaluate_pipeline`, :func:`~monai_pixelcam.export.read_threshold`
  and :func:`~monai_pixelcam.export.export_model`, so that the multi-GPU config imports them over
  the single-process functions and reuses ``train.json``'s steps unchanged. Evaluation comes after the last
  collective of the run: every rank leaves the process group (:func:`leave_distributed`), then rank 0
  evaluates the whole test set alone, as a single process would, and the others are done.

Every function also works without a process group (a plain single process is rank 0 of 1).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from monai.data import DataLoader
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from torch.utils.tensorboard import SummaryWriter

import monai_pixelcam.data.prepare as _prepare
import monai_pixelcam.export as _export
import monai_pixelcam.engines.pipeline as _pipeline

__all__ = [
    "get_rank",
    "get_world_size",
    "is_rank0",
    "local_device",
    "init_distributed",
    "wrap_ddp",
    "barrier",
    "on_rank0",
    "leave_distributed",
    "finalize_distributed",
    "rank0_summary_writer",
    "unshard",
    "prepare_datalist",
    "store_cams",
    "evaluate_pipeline",
    "read_threshold",
    "export_model",
]

logger = logging.getLogger(__name__)


def _group_up() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """Rank of this process: the process group's, else the launcher's ``RANK`` (kept after
    :func:`leave_distributed`), else 0."""
    return dist.get_rank() if _group_up() else int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    """Number of processes: the process group's, else the launcher's ``WORLD_SIZE``, else 1."""
    return dist.get_world_size() if _group_up() else int(os.environ.get("WORLD_SIZE", 1))


def is_rank0() -> bool:
    return get_rank() == 0


def local_device(device: str | torch.device | None = None) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for ``None`` or ``"cuda"`` when a GPU is visible, the CPU for
    ``None`` without one; an explicit ``"cpu"`` or ``"cuda:k"`` is kept."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None, timeout_minutes: float = 120.0
) -> torch.device:
    """Join the default process group (once; later calls only return the device).

    Under ``torchrun`` the group is read from its environment (``env://``); without a launcher a group of one
    process is made on a free local port, so the multi-GPU config also runs as a plain single process.

    Args:
        device: as :func:`local_device`; a CUDA device also becomes the current device.
        backend: ``"nccl"`` or ``"gloo"``; default NCCL for a CUDA device, gloo for the CPU.
        timeout_minutes: how long a collective may wait. The ranks idle in one while rank 0 generates the
            synthetic data or stores the CAMs, which at the paper's scale takes longer than torch's default.

    Returns:
        the device of this process.
    """
    device = local_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not _group_up():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(minutes=timeout_minutes)}
        if "RANK" not in os.environ:
            kwargs.update(init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
        dist.init_process_group(**kwargs)
        # Ignite's first query of a new group runs collectives (hostnames, processes per node): make it here,
        # on every rank at once, not later where only rank 0 might ask
        idist.sync()
        logger.info(f"rank {get_rank()}/{get_world_size()}: process group up ({backend}, device {device})")
    return device


def wrap_ddp(network: torch.nn.Module, device: str | torch.device, **kwargs: Any) -> DistributedDataParallel:
    """``network`` moved to ``device`` and wrapped in ``DistributedDataParallel`` (``kwargs`` go to it).

    Evaluators, CAM storing and checkpoints keep using ``network`` itself, which shares its parameters with
    the wrapper: its forward passes then start no DDP collective.
    """
    device = torch.device(device)
    network = network.to(device)
    if device.type == "cuda":
        kwargs.setdefault("device_ids", [device.index if device.index is not None else torch.cuda.current_device()])
    logger.info(f"rank {get_rank()}/{get_world_size()}: {type(network).__name__} in DistributedDataParallel")
    return DistributedDataParallel(network, **kwargs)


def barrier() -> None:
    """Wait for every rank; nothing without a process group."""
    if not _group_up():
        return
    if dist.get_backend() == "nccl":  # NCCL's barrier runs on a GPU: this rank's, not a guessed one
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def on_rank0(fn: Callable, share_result: bool = True) -> Callable:
    """``fn`` run by rank 0 alone, the other ranks waiting for it to finish.

    With a process group, the outcome is broadcast: the others return rank 0's result (``share_result``;
    otherwise ``None``), or raise if rank 0 raised instead of waiting for it forever. Without a group, rank 0
    (or a plain process) runs ``fn`` and the other launched ranks return ``None``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        rank, name = get_rank(), getattr(fn, "__name__", "step")
        if not _group_up():
            if rank == 0:
                return fn(*args, **kwargs)
            logger.info(f"rank {rank}: skipped {name} (rank 0 runs it)")
            return None
        if rank == 0:
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:
                dist.broadcast_object_list([("error", f"{type(e).__name__}: {e}")], src=0)
                raise
            dist.broadcast_object_list([("ok", result if share_result else None)], src=0)
            return result
        logger.info(f"rank {rank}: waiting for rank 0 to run {name}")
        outcome: list[Any] = [None]
        dist.broadcast_object_list(outcome, src=0)
        status, value = outcome[0]
        if status == "error":
            raise RuntimeError(f"rank 0 failed in {name}: {value}")
        return value

    wrapper.__doc__ = (
        f"Rank 0 runs ``{getattr(fn, '__module__', '')}.{getattr(fn, '__name__', '')}``, the other ranks wait"
        f"{' and return its result' if share_result else ' and return None'} (see :func:`on_rank0`).\n\n"
        + (fn.__doc__ or "")
    )
    return wrapper


def leave_distributed() -> None:
    """All ranks meet, then leave the process group (MONAI and Ignite metrics compute locally again);
    nothing without a group. The ranks keep their launcher ranks (:func:`get_rank`)."""
    if not _group_up():
        return
    rank = dist.get_rank()
    barrier()
    dist.destroy_process_group()
    idist.sync()
    logger.info(f"rank {rank}: left the process group")


def finalize_distributed() -> None:
    """The multi-GPU config's ``finalize``: leave the group if still in it, and say this rank is done."""
    leave_distributed()
    logger.info(f"rank {get_rank()}: finished")


class _NullWriter:
    """Stands for a ``SummaryWriter`` on ranks other than 0: every method does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):  # copy, pickle and the like must not take it for a writer method
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def rank0_summary_writer(log_dir: str, **kwargs: Any) -> SummaryWriter | _NullWriter:
    """A ``SummaryWriter`` on rank 0; on the other ranks a stand-in that writes nothing (a real writer would
    create an event file per rank at once)."""
    if is_rank0():
        return SummaryWriter(log_dir=log_dir, **kwargs)
    logger.info(f"rank {get_rank()}: no TensorBoard writer for {log_dir}; rank 0 writes logs and checkpoints")
    return _NullWriter()


def unshard(loader):
    """``loader`` over its whole dataset: a loader sharded by a ``DistributedSampler`` is rebuilt without it
    (same dataset, batch size, workers, collation); any other loader is returned as it is."""
    if not isinstance(getattr(loader, "sampler", None), DistributedSampler):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


# Rank-aware twins of the pipeline steps, same names and signatures: rank 0 runs the step. The data are
# generated or converted once and the CAMs stored once; the others wait, then read the same files.

prepare_datalist = on_rank0(_prepare.prepare_datalist)
store_cams = on_rank0(_pipeline.store_cams, share_result=False)
read_threshold = on_rank0(_export.read_threshold)
export_model = on_rank0(_export.export_model)


def evaluate_pipeline(*args: Any, **kwargs: Any) -> dict | None:
    """:func:`monai_pixelcam.engines.pipeline.evaluate_pipeline` (same arguments) on rank 0 alone, over the
    whole valpx and test splits; the other ranks return ``None``.

    Every rank leaves the process group first (:func:`leave_distributed`): rank 0's metrics would otherwise
    wait in their all-reduce for ranks that do not evaluate. So this is the run's last step with collectives.
    """
    leave_distributed()
    if not is_rank0():
        logger.info(f"rank {get_rank()}: skipped evaluate_pipeline (rank 0 evaluates and exports)")
        return None
    bound = inspect.signature(_pipeline.evaluate_pipeline).bind(*args, **kwargs)
    for name in ("valpx_loader", "test_loader"):  # the threshold and figures need the whole splits
        bound.arguments[name] = unshard(bound.arguments[name])
    return _pipeline.evaluate_pipeline(*bound.args, **bound.kwargs)
