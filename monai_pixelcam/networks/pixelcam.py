"""PixelCAM network: a WSOL classifier plus a pixel head on the same feature map."""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import PixelHead
from .weights import _load_checked, read_state_dict
from .wsol import WSOLClassifier, _check_channels, encoder_head_param_groups

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

    @classmethod
    def from_source(
        cls,
        classifier: WSOLClassifier,
        pixel_head: nn.Module | None = None,
        freeze_backbone: bool = False,
        pixel_hidden_channels: int | None = None,
    ) -> PixelCAMNet:
        """PixelCAM network initialised from a trained source classifier.

        Encoder and image head are deep copies (training PixelCAM leaves the
        source model untouched); the pixel head is ``pixel_head`` or a fresh
        :class:`PixelHead` on the encoder's ``out_channels`` (an MLP when
        ``pixel_hidden_channels`` is set).
        """
        if not isinstance(classifier, WSOLClassifier):
            raise TypeError(f"from_source expects a WSOLClassifier, got {type(classifier).__name__}")
        encoder = copy.deepcopy(classifier.encoder)
        image_head = copy.deepcopy(classifier.head)
        if pixel_head is None:
            pixel_head = PixelHead(encoder.out_channels, hidden_channels=pixel_hidden_channels)
        return cls(encoder, image_head, pixel_head, freeze_backbone=freeze_backbone)

    def load_source(self, path, key: Optional[str] = None) -> PixelCAMNet:
        """Load a trained source classifier's checkpoint (a :class:`WSOLClassifier` state dict, ``encoder.*``
        and ``head.*``) into the encoder and image head, strictly; the pixel head keeps its weights.

        The in-place twin of :meth:`from_source` for a network that already exists (e.g. built by a bundle
        config before the source model was trained)."""
        state = {
            (f"image_head.{k[len('head.'):]}" if k.startswith("head.") else k): v
            for k, v in read_state_dict(path, key=key).items()
        }
        _load_checked(nn.ModuleDict({"encoder": self.encoder, "image_head": self.image_head}), state, str(path))
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
