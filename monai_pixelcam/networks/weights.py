"""Load weights from local files: torchvision ImageNet checkpoints into our encoders, and our own checkpoints.

Nothing is downloaded: users pass the path of a file they already have, e.g.
torchvision's ``resnet18-f37072fd.pth``, ``resnet50-0676ba61.pth`` or
``vgg16-397923af.pth``. Files are read with ``torch.load(weights_only=True)``,
so a checkpoint cannot run code when opened.

Only :class:`ResNetEncoder` (``base_width=64``) and :class:`VGG16Encoder` have a
torchvision counterpart; :class:`ViTTinyEncoder` does not (torchvision has no
ViT-tiny and timm/DeiT keys use another layout), so it is trained from
scratch or loaded from one of our own checkpoints with :func:`load_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.utils import copy_model_state

from .encoders import ResNetEncoder, VGG16Encoder

__all__ = ["read_state_dict", "load_state_strict", "load_torchvision_weights", "load_checkpoint", "WEIGHT_CONTAINER_KEYS"]

#: Keys under which checkpoint files commonly nest the state dict.
WEIGHT_CONTAINER_KEYS = ("state_dict", "model", "network", "net")

_MAX_LISTED = 25


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict (``name -> tensor``) from a local file.

    Accepts a raw state dict or a dict that nests it under ``key`` (when given)
    or under the first of :data:`WEIGHT_CONTAINER_KEYS` present. A
    ``DataParallel`` ``module.`` prefix on every key is removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a weights-only torch file or holds no state dict; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused (not weights-only), truncated or foreign file
        raise ValueError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({type(e).__name__}: {e})"
        ) from e
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{path}: no entry {key!r} in the checkpoint (top level: {found})")
        obj = obj[key]
    elif isinstance(obj, Mapping):
        for k in WEIGHT_CONTAINER_KEYS:
            if isinstance(obj.get(k), Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{path}: expected a state dict (names -> tensors), directly or under one of {WEIGHT_CONTAINER_KEYS}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(title: str, items: Sequence[str]) -> str:
    shown = "\n".join(f"    {s}" for s in items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def load_state_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], source: str, skip_target: Sequence[str] = ()
) -> nn.Module:
    """Copy ``state`` into ``module`` (in place, returned) with ``monai.networks.utils.copy_model_state``, after
    checking names and shapes; raise one ValueError naming ``source`` (a file, usually) and listing every problem.

    ``copy_model_state`` alone skips what does not fit, silently; the check in front makes a wrong file an error.
    Target entries whose name starts with a prefix in ``skip_target`` are not expected in ``state`` and keep
    their values (layers without a counterpart there). BatchNorm's ``num_batches_tracked`` may be absent (older
    torchvision files lack it).
    """
    target = {k: v for k, v in module.state_dict().items() if not k.startswith(tuple(skip_target))}
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in state.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = [f"{source}: weights do not fit {type(module).__name__}"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if mismatched:
            parts.append(_listing("shape mismatches", mismatched))
        raise ValueError("\n".join(parts))
    copy_model_state(module, dict(state), inplace=True)
    return module


def load_torchvision_weights(encoder: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a torchvision-format ImageNet checkpoint into ``encoder`` (in place) and return it.

    - :class:`ResNetEncoder` (ResNet18 / ResNet50 at ``base_width=64``): all
      keys map by name (``conv1``, ``bn1``, ``layerN.i.*``); ``fc.*`` is dropped.
    - :class:`VGG16Encoder`: ``features.N.*`` map by index (dropped pools are
      identities, so indices are torchvision's; ``batch_norm=True`` for
      ``vgg16_bn`` files); ``classifier.*`` is dropped; ``conv6`` keeps its
      initialisation (no counterpart in torchvision).

    Strict: any missing key, unexpected key or shape mismatch raises a
    ValueError that names the file and lists them all (e.g. a ResNet50 file
    given to a ResNet18, or any file given to a ``base_width != 64`` encoder).
    """
    if isinstance(encoder, ResNetEncoder):
        drop, skip = ("fc.",), ()
    elif isinstance(encoder, VGG16Encoder):
        drop, skip = ("classifier.",), ("conv6.",)
    else:
        raise TypeError(
            f"torchvision weights map onto ResNetEncoder and VGG16Encoder only, not {type(encoder).__name__}"
        )
    path = os.fspath(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith(drop)}
    if isinstance(encoder, VGG16Encoder):
        # vgg16 and vgg16_bn number their layers differently, so a mix-up shows as dozens of key errors:
        # name the cause instead.
        file_bn = any(k.endswith("running_mean") for k in state)
        if file_bn != encoder.batch_norm:
            raise ValueError(
                f"{path}: a torchvision {'vgg16_bn' if file_bn else 'vgg16'} checkpoint, but the encoder has "
                f"batch_norm={encoder.batch_norm}; build VGG16Encoder(batch_norm={file_bn})"
            )
    return load_state_strict(encoder, state, path, skip_target=skip)


def load_checkpoint(module: nn.Module, path: str | os.PathLike, key: str | None = None) -> nn.Module:
    """Load one of our own checkpoints (e.g. a trained :class:`WSOLClassifier`) into ``module``, strictly.

    The file may hold the raw state dict or nest it (see :func:`read_state_dict`;
    MONAI/Ignite ``CheckpointSaver`` files with ``save_dict={"model": net, ...}``
    are found under ``"model"``, or pass ``key``). Every missing key, unexpected
    key and shape mismatch is listed in one ValueError naming the file.
    """
    path = os.fspath(path)
    return load_state_strict(module, read_state_dict(path, key=key), path)
