"""Build networks by name; these are the ``_target_`` entry points of the bundle configs.

Arguments stay plain (strings, numbers, paths) so that a config can say, e.g.::

    "network_def": {"_target_": "monai_pixelcam.networks.build_classifier",
                    "encoder": "resnet18", "head": "cam", "num_classes": 2, "base_width": 16}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from monai.utils import look_up_option

from ..precision import with_amp, with_channels_last
from .encoders import VGG16Encoder, ViTTinyEncoder, resnet18, resnet18_slim, resnet50
from .evidence import PositiveEvidenceHead
from .heads import CAMHead, DeepMILHead, PixelHead
from .pixelcam import PixelCAMLocalizer, PixelCAMNet
from .weights import load_torchvision_weights
from .wsol import WSOLClassifier

__all__ = [
    "ENCODERS",
    "HEADS",
    "build_encoder",
    "build_head",
    "build_classifier",
    "build_pixelcam",
    "build_localizer",
]

ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet18_slim": resnet18_slim,
    "resnet50": resnet50,
    "vgg16": VGG16Encoder,
    "vit_tiny": ViTTinyEncoder,
}

HEADS: dict[str, Callable[..., nn.Module]] = {
    "cam": CAMHead,
    "deepmil": DeepMILHead,
    "positive_evidence": PositiveEvidenceHead,
}


def _lookup(table: dict[str, Callable[..., nn.Module]], name: str, what: str) -> Callable[..., nn.Module]:
    """``look_up_option`` (which suggests the closest name) with the kind of thing asked for in the message."""
    try:
        return look_up_option(name, table)
    except ValueError as e:
        raise ValueError(f"unknown {what} {name!r}: {e}") from None


def build_encoder(
    name: str,
    pretrained: str | os.PathLike | None = None,
    snapshot: str | os.PathLike | None = None,
    trainable_blocks: int | None = None,
    **kwargs,
) -> nn.Module:
    """Encoder ``name`` (``resnet18``, ``resnet50``, ``vgg16``, ``vit_tiny``) built with ``kwargs``, or the
    transformer of a local Hugging Face snapshot folder.

    ``pretrained``: path of a local torchvision checkpoint to load (see
    :func:`~monai_pixelcam.networks.weights.load_torchvision_weights`); None or "" trains from scratch.
    ``snapshot``: a local snapshot folder, weights included (``name`` and ``pretrained`` are then unused): a
    Hugging Face ``transformers`` one (:class:`~monai_pixelcam.networks.snapshot.SnapshotEncoder`) or a timm one
    (:class:`~monai_pixelcam.networks.timm_snapshot.TimmSnapshotEncoder`, its ``config.json`` names an
    ``architecture``), with ``trainable_blocks`` (None: all train, 0: frozen, ``N``: the last ``N`` blocks).
    """
    if snapshot:
        # optional dependencies (transformers, timm), imported for snapshots only
        from .snapshot import _check_folder, _read_json, build_snapshot_encoder
        from .timm_snapshot import TimmSnapshotEncoder, is_timm_config

        folder = Path(os.fspath(snapshot)).expanduser()
        _check_folder(folder)
        if is_timm_config(_read_json(folder / "config.json", "snapshot config")):
            return TimmSnapshotEncoder(folder, trainable_blocks=trainable_blocks)
        return build_snapshot_encoder(folder, trainable_blocks=trainable_blocks)
    if trainable_blocks is not None:
        raise ValueError(f"trainable_blocks is for snapshot encoders; encoder {name!r} trains whole or frozen "
                         "(freeze_backbone)")
    encoder = _lookup(ENCODERS, name, "encoder")(**kwargs)
    if pretrained:
        load_torchvision_weights(encoder, pretrained)
    return encoder


def build_head(name: str, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    """Image head ``name`` (``cam`` or ``deepmil``) on ``in_channels`` features, ``num_classes`` logits."""
    return _lookup(HEADS, name, "head")(in_channels, num_classes, **kwargs)


def build_classifier(
    encoder: str = "resnet18",
    head: str = "cam",
    num_classes: int = 2,
    pretrained: str | os.PathLike | None = None,
    head_kwargs: dict | None = None,
    init_seed: int | None = None,
    encoder_snapshot: str | os.PathLike | None = None,
    trainable_blocks: int | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    **encoder_kwargs,
) -> WSOLClassifier:
    """WSOL source classifier: encoder ``encoder`` (kwargs ``encoder_kwargs``, optional torchvision
    ``pretrained`` file; or the local Hugging Face ``encoder_snapshot`` with ``trainable_blocks``, see
    :func:`build_encoder`) and image head ``head`` (kwargs ``head_kwargs``) with ``num_classes`` outputs.
    ``amp``: None, ``"bf16"`` or ``"fp16"``, the forward's autocast dtype (:func:`monai_pixelcam.precision.with_amp`);
    ``channels_last``: parameters and inputs in channels-last memory format
    (:func:`monai_pixelcam.precision.with_channels_last`).

    ``init_seed``: draw the initial weights from torch's generator seeded with it (forked, so the global stream
    is left as it was); None draws from the global stream, whose state depends on what used it before (every
    data loader iterator does)."""
    with _seeded(init_seed):
        enc = build_encoder(
            encoder, pretrained=pretrained, snapshot=encoder_snapshot, trainable_blocks=trainable_blocks,
            **encoder_kwargs,
        )
        net = WSOLClassifier(enc, build_head(head, enc.out_channels, num_classes, **(head_kwargs or {})))
    return with_amp(with_channels_last(net, channels_last), amp)


def build_pixelcam(
    encoder: str = "resnet18",
    head: str = "cam",
    num_classes: int = 2,
    pretrained: str | os.PathLike | None = None,
    pixel_hidden_channels: int | None = None,
    freeze_backbone: bool = False,
    head_kwargs: dict | None = None,
    init_seed: int | None = None,
    encoder_snapshot: str | os.PathLike | None = None,
    trainable_blocks: int | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    **encoder_kwargs,
) -> PixelCAMNet:
    """PixelCAM network with the architecture of ``build_classifier(encoder, head, num_classes, ...)``.

    Encoder and image head start from ``pretrained`` or scratch, the pixel head is fresh; start them from a
    trained source classifier with :meth:`PixelCAMNet.load_source` (``build_pixelcam(...).load_source(path)``).
    ``pixel_hidden_channels`` selects the MLP pixel head; ``freeze_backbone`` the two-step variant (only the
    pixel head trains). ``init_seed``, ``encoder_snapshot``, ``trainable_blocks``, ``amp``, ``channels_last``: as
    :func:`build_classifier`.
    """
    with _seeded(init_seed):
        source = build_classifier(
            encoder, head, num_classes, pretrained=pretrained, head_kwargs=head_kwargs,
            encoder_snapshot=encoder_snapshot, trainable_blocks=trainable_blocks, **encoder_kwargs,
        )
        pixel_head = PixelHead(source.encoder.out_channels, hidden_channels=pixel_hidden_channels)
    net = PixelCAMNet(source.encoder, source.image_head, pixel_head, freeze_backbone=freeze_backbone)
    return with_amp(with_channels_last(net, channels_last), amp)


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Torch's CPU generator seeded with ``seed`` inside, restored after; nothing when ``seed`` is None."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def build_localizer(**kwargs) -> PixelCAMLocalizer:
    """:class:`PixelCAMLocalizer` around ``build_pixelcam(**kwargs)``: ``B x 3 x H x W -> B x 1 x H x W`` in [0, 1].

    The tensor-returning ``network_def`` that MONAI's ``verify_net_in_out`` and
    TorchScript export need; its state dict has the PixelCAMNet's keys.
    """
    return PixelCAMLocalizer(build_pixelcam(**kwargs))
