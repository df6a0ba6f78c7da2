"""PixelCAM network: a WSOL classifier plus a pixel head on the same feature map."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .weights import load_state_strict, read_state_dict
from .wsol import _check_channels, encoder_head_param_groups, unwrap_parallel

__all__ = ["PixelCAMNet", "PixelCAMLocalizer", "foreground_map"]


def foreground_map(pix_logits: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
    """Foreground probability map from pixel-head logits.

    Args:
        pix_logits: ``B x 2 x h x w`` logits (channel 0 background, 1 foreground).
        size: output ``[H, W]``; None keeps ``h x w``.

    Returns:
        ``B x 1 x H x W`` in [0, 1]: softmax foreground channel, bilinearly
        resized (a convex combination, so it stays in [0, 1]).
    """
    prob = torch.softmax(pix_logits, dim=1)[:, 1:2]
    if size is not None:
        if prob.shape[-2] != size[0] or prob.shape[-1] != size[1]:
            prob = F.interpolate(prob, size=size, mode="bilinear", align_corners=False)
    return prob


class PixelCAMNet(nn.Module):
    """Encoder shared by an image head (class logits) and a pixel head (foreground/background logits).

    ``forward(x: B x 3 x H x W) -> {"cls": B x K, "pix": B x 2 x h x w}`` logits,
    one pass. At inference :meth:`localization_map` gives the foreground
    probability ``B x 1 x H x W`` in [0, 1]; no gradient or class index is needed.

    Args:
        encoder: module with ``out_channels``; ``B x 3 x H x W -> B x C x h x w``.
        image_head: ``B x C x h x w -> B x K`` (e.g. :class:`CAMHead`, :class:`DeepMILHead`).
        pixel_head: ``B x C x h x w -> B x 2 x h x w`` (e.g. :class:`PixelHead`).
        freeze_backbone: two-step variant: encoder and image head get
            ``requires_grad=False`` and stay in eval mode (BatchNorm statistics
            frozen too) even under ``train()``; only the pixel head learns.
    """

    def __init__(
        self, encoder: nn.Module, image_head: nn.Module, pixel_head: nn.Module, freeze_backbone: bool = False
    ) -> None:
        super().__init__()
        _check_channels(encoder, image_head, f"image head {type(image_head).__name__}")
        _check_channels(encoder, pixel_head, f"pixel head {type(pixel_head).__name__}")
        self.encoder = encoder
        self.image_head = image_head
        self.pixel_head = pixel_head
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            for p in list(self.encoder.parameters()) + list(self.image_head.parameters()):
                p.requires_grad_(False)
            self.train(self.training)

    def load_source(
        self, source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module, key: Optional[str] = None
    ) -> PixelCAMNet:
        """Start from a trained source classifier: the one way to initialise PixelCAM from its source model.

        The source's ``encoder.*`` and ``image_head.*`` (a :class:`WSOLClassifier` has this network's names, so
        no key is mapped) are copied into the encoder and image head, strictly checked
        (:func:`~monai_pixelcam.networks.weights.load_state_strict`); the pixel head keeps its weights. In
        place, so a bundle can build the network before the source model exists and load it when training
        starts (:class:`monai_pixelcam.handlers.InitFromSource`); copies, so training PixelCAM leaves the
        source untouched.

        Args:
            source: a checkpoint file (read with :func:`~monai_pixelcam.networks.weights.read_state_dict`,
                ``key`` as there), a trained :class:`WSOLClassifier` (or a parallel wrapper around one) or its
                state dict.

        Raises:
            ValueError: names and lists every missing, unexpected or mis-shaped entry, and the file.
        """
        if isinstance(source, nn.Module):
            state, name = unwrap_parallel(source).state_dict(), f"source {type(unwrap_parallel(source)).__name__}"
        elif isinstance(source, Mapping):
            state, name = source, "source state dict"
        else:
            state, name = read_state_dict(source, key=key), os.fspath(source)
        load_state_strict(self, state, name, skip_target=("pixel_head.",))
        return self

    def train(self, mode: bool = True) -> PixelCAMNet:
        super().train(mode)
        if self.freeze_backbone:
            self.encoder.eval()
            self.image_head.eval()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.encoder(x)
        return {"cls": self.image_head(features), "pix": self.pixel_head(features)}

    def localization_map(self, x: torch.Tensor, size: Optional[List[int]] = None) -> torch.Tensor:
        """Foreground probability ``B x 1 x H x W`` in [0, 1] for ``x`` ``B x 3 x H x W``.

        Runs the encoder and the pixel head only; ``size`` (``[H, W]``)
        defaults to the input size. Call under ``torch.no_grad()`` for inference.
        """
        if size is None:
            size = [x.shape[-2], x.shape[-1]]
        return foreground_map(self.pixel_head(self.encoder(x)), size)

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """SGD parameter groups: encoder at ``lr``, image and pixel heads at ``lr * head_lr_mult``.

        Frozen parameters are left out (with ``freeze_backbone`` only the pixel head remains).
        """
        return encoder_head_param_groups(self.encoder, [self.image_head, self.pixel_head], lr, head_lr_mult)


class PixelCAMLocalizer(nn.Module):
    """Tensor-returning inference wrapper: ``forward(x: B x 3 x H x W) -> B x 1 x H x W`` in [0, 1].

    For MONAI's ``verify_net_in_out``, sliding-window inference and TorchScript
    export, which need a network that returns one tensor. ``torch.jit.script``
    works for every encoder and keeps inputs of any size; a ``torch.jit.trace``
    of a ViT-based localizer is fixed to the traced input size (the position
    embedding resize is a Python branch), so script that one.

    The modules are registered under PixelCAMNet's own names, so both share one state dict layout:
    the bundle's ``models/model.pt`` (a PixelCAMNet state dict) loads into its ``network_def`` as is,
    which ``ckpt_export`` relies on. The image head is kept for that reason only.
    """

    def __init__(self, net: PixelCAMNet) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.image_head = net.image_head
        self.pixel_head = net.pixel_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return foreground_map(self.pixel_head(self.encoder(x)), [x.shape[-2], x.shape[-1]])

    @torch.jit.unused
    def outputs(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Both heads' logits in one pass, as :meth:`PixelCAMNet.forward` gives them: ``{"cls": B x K,
        "pix": B x 2 x h x w}`` (what inference needs for the class probabilities besides the map)."""
        features = self.encoder(x)
        return {"cls": self.image_head(features), "pix": self.pixel_head(features)}
