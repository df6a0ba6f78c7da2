"""WSOL source classifier: an encoder and an image head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["WSOLClassifier", "encoder_head_param_groups", "unwrap_parallel"]


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (the network itself otherwise):
    what checkpoints save and load, and what carries ``param_groups`` and ``load_source``."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


def encoder_head_param_groups(
    encoder: nn.Module, heads: Sequence[nn.Module], lr: float, head_lr_mult: float = 10.0
) -> list[dict]:
    """Optimiser parameter groups: the encoder at ``lr``, the heads at ``lr * head_lr_mult``.

    The PixelCAM paper (and the WSOL references) train heads 10x faster than
    the (pretrained) encoder. Parameters with ``requires_grad=False`` (a frozen
    backbone) are left out, and so is a group left empty. Each group carries a
    ``"name"`` (``"encoder"`` or ``"heads"``), which torch optimisers keep.
    """
    groups = [
        {"name": "encoder", "params": [p for p in encoder.parameters() if p.requires_grad], "lr": float(lr)},
        {
            "name": "heads",
            "params": [p for h in heads for p in h.parameters() if p.requires_grad],
            "lr": float(lr) * float(head_lr_mult),
        },
    ]
    return [g for g in groups if g["params"]]


def _check_channels(encoder: nn.Module, head: nn.Module, what: str) -> None:
    c_enc, c_head = getattr(encoder, "out_channels", None), getattr(head, "in_channels", None)
    if c_enc is not None and c_head is not None and c_enc != c_head:
        raise ValueError(
            f"{what} expects {c_head} input channels but the encoder ({type(encoder).__name__}) gives {c_enc}"
        )


class WSOLClassifier(nn.Module):
    """Image classifier ``image_head(encoder(x))`` whose feature map is the CAM source.

    ``forward(x: B x 3 x H x W) -> B x K`` logits; :meth:`features` returns the
    encoder map ``B x C x h x w``. CAM extractors hook ``self.encoder`` (its
    output is the map) and read ``self.image_head.class_weights()`` (``K x C``).

    The modules have :class:`~monai_pixelcam.networks.PixelCAMNet`'s names (``encoder``, ``image_head``), so
    a source checkpoint is the PixelCAM state dict without ``pixel_head.*`` and loads with no key mapping.
    """

    def __init__(self, encoder: nn.Module, image_head: nn.Module) -> None:
        super().__init__()
        _check_channels(encoder, image_head, f"image head {type(image_head).__name__}")
        self.encoder = encoder
        self.image_head = image_head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder feature map ``B x C x h x w``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.encoder(x))

    def param_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """SGD parameter groups: encoder at ``lr``, head at ``lr * head_lr_mult``."""
        return encoder_head_param_groups(self.encoder, [self.image_head], lr, head_lr_mult)
