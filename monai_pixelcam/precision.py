"""Mixed precision and memory format for every path a network runs on: training, evaluation, CAM storage and
inference.

The bundle setting ``amp`` is ``null`` (float32), ``"bf16"`` or ``"fp16"``. :func:`with_amp` makes a network's
``forward`` (and ``outputs``, where it has one) run under ``torch.autocast`` on the input's device with that
dtype, and hands back float32 outputs, so that losses, metrics and maps downstream stay float32. It is a
wrapper on the instance, not a module around it: the state dict, checkpoints and exported models are the same
as in float32.

Why not MONAI's own switch: ``SupervisedTrainer(amp=True)`` enters ``torch.autocast("cuda")`` only, so it does
nothing on a CPU, and its evaluators and our inference paths would need it each. MONAI's switch still gives the
fp16 loss scaling on a GPU (its ``GradScaler``); the bundle turns it on for ``fp16`` there.

The bundle setting ``channels_last`` (default false) stores a network's parameters, and hands its 4-D inputs,
in channels-last memory format (:func:`with_channels_last`), which convolutions can run faster in on GPUs
with mixed precision (``benchmarks/bench_gpu_amp.py``); on our 2-core CPU it showed no gain that held from run
to run (``benchmarks/bench_encoders.py``). Values are the same; only the order of floating-point sums changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["AMP_DTYPES", "amp_dtype", "with_amp", "with_channels_last"]

#: the values of the ``amp`` setting and their dtypes
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: str | None) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting (None: float32, no autocast).

    Raises:
        ValueError: a value other than None, ``"bf16"`` and ``"fp16"`` (the message lists them).
    """
    if amp is None:
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be null, 'bf16' or 'fp16', got {amp!r}")
    return AMP_DTYPES[amp]


def _float32(out: Any) -> Any:
    """Floating tensors of an output (a tensor, or a dict / tuple / list of them) as float32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: _float32(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_float32(v) for v in out)
    return out


def _wrap_entry_points(network: nn.Module, wrap: Callable[[Callable], Callable]) -> nn.Module:
    """``network`` with ``forward``, and ``outputs`` where it has one, replaced by ``wrap`` of them."""
    network.forward = wrap(network.forward)
    if callable(getattr(network, "outputs", None)):
        network.outputs = wrap(network.outputs)
    return network


def _autocast(method: Callable, dtype: torch.dtype) -> Callable:
    @functools.wraps(method)
    def run(x: torch.Tensor, *args, **kwargs):
        with torch.autocast(device_type=x.device.type, dtype=dtype):
            out = method(x, *args, **kwargs)
        return _float32(out)

    run.amp_dtype = dtype  # what tests and logs read
    return run


def with_amp(network: nn.Module, amp: str | None) -> nn.Module:
    """``network`` whose ``forward`` (and ``outputs``) run under autocast with the dtype of ``amp`` and return
    float32; ``network`` itself unchanged when ``amp`` is None. Returns ``network``.

    Raises:
        ValueError: an unknown ``amp`` value.
    """
    dtype = amp_dtype(amp)
    if dtype is None or getattr(network.forward, "amp_dtype", None) == dtype:
        return network
    return _wrap_entry_points(network, lambda method: _autocast(method, dtype))


def _channels_last_inputs(method: Callable) -> Callable:
    @functools.wraps(method)
    def run(x: torch.Tensor, *args, **kwargs):
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return method(x, *args, **kwargs)

    run.channels_last = True
    return run


def with_channels_last(network: nn.Module, channels_last: bool) -> nn.Module:
    """``network`` with its parameters in channels-last memory format and its ``forward`` (and ``outputs``)
    giving 4-D inputs (``B x C x H x W``) to it in that format; ``network`` itself unchanged when
    ``channels_last`` is false. Returns ``network``; outputs, state dict values and checkpoints are the same
    tensors (loading a checkpoint copies into the channels-last parameters)."""
    if not channels_last or getattr(network.forward, "channels_last", False):
        return network
    network.to(memory_format=torch.channels_last)
    return _wrap_entry_points(network, _channels_last_inputs)
