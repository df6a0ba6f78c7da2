"""Heads on an encoder feature map ``B x C x h x w``.

Image heads (:class:`CAMHead`, :class:`DeepMILHead`) turn the map into class
logits ``B x K`` and expose ``class_weights()`` (``K x C``), the per-class
channel weights that the CAM method multiplies with the feature map.
:class:`PixelHead` turns it into per-pixel background/foreground logits
``B x 2 x h x w``.
"""

from typing import Optional

import torch
import torch.nn as nn

__all__ = ["CAMHead", "DeepMILHead", "PixelHead"]


class CAMHead(nn.Module):
    """Global average pooling + linear layer (Zhou et al. 2016), the classic CAM classifier.

    ``forward(features: B x C x h x w) -> B x K`` logits. Because pooling is
    linear, ``class_weights()[k] . features[:, :, i, j]`` is class ``k``'s
    activation map (CAM) and its spatial mean plus the bias is the logit.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features.mean(dim=(2, 3)))

    def class_weights(self) -> torch.Tensor:
        """``K x C`` weight of the linear layer."""
        return self.fc.weight


class DeepMILHead(nn.Module):
    """Attention-based multiple-instance pooling (Ilse et al., ICML 2018) over feature-map positions.

    Each of the ``h * w`` positions is an instance ``f_i`` (``C`` channels).
    Attention ``a_i = softmax_i(w^T (tanh(V f_i) * sigmoid(U f_i)))`` (gated) or
    ``softmax_i(w^T tanh(V f_i))`` (``gated=False``); the bag embedding
    ``z = sum_i a_i f_i`` goes through a linear layer to ``B x K`` logits.

    ``class_weights()`` is that final linear's ``K x C`` weight: its product
    with the feature map gives the per-position class evidence, which the
    attention then weighs (logit_k = sum_i a_i (W_k . f_i) + b_k).

    The attention of the last forward pass is kept (detached) and returned by
    :meth:`last_attention_map` as ``B x 1 x h x w`` in [0, 1], summing to 1 per
    image; :meth:`attention` computes it for given features.
    """

    # a real (not postponed) annotation: TorchScript needs it to accept the assignment in forward
    last_attention: Optional[torch.Tensor]

    def __init__(self, in_channels: int, num_classes: int, attention_dim: int = 128, gated: bool = True) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.gated = bool(gated)
        self.attention_v = nn.Linear(in_channels, attention_dim)
        self.attention_u = nn.Linear(in_channels, attention_dim) if gated else None
        self.attention_w = nn.Linear(attention_dim, 1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.last_attention = None

    def attention(self, features: torch.Tensor) -> torch.Tensor:
        """Attention weights ``B x 1 x h x w`` for ``features`` ``B x C x h x w``; each image's weights sum to 1."""
        b, _, h, w = features.shape
        instances = features.flatten(2).transpose(1, 2)  # B x N x C
        hidden = torch.tanh(self.attention_v(instances))
        if self.attention_u is not None:
            hidden = hidden * torch.sigmoid(self.attention_u(instances))
        scores = self.attention_w(hidden).squeeze(-1)  # B x N
        return torch.softmax(scores, dim=1).reshape(b, 1, h, w)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        att = self.attention(features)
        self.last_attention = att.detach()
        bag = (features * att).sum(dim=(2, 3))  # B x C
        return self.fc(bag)

    def last_attention_map(self) -> torch.Tensor:
        """Attention of the last forward pass, ``B x 1 x h x w`` (detached)."""
        att = self.last_attention
        if att is None:
            raise RuntimeError("DeepMILHead.last_attention_map(): no forward pass has run yet")
        return att

    def class_weights(self) -> torch.Tensor:
        """``K x C`` weight of the final linear layer."""
        return self.fc.weight


class PixelHead(nn.Module):
    """Per-pixel classifier on the feature map: ``B x C x h x w`` -> ``B x num_outputs x h x w`` logits.

    Default: a single 1x1 conv ``C -> 2`` (channel 0 background, 1 foreground),
    ``2 * C + 2`` parameters (4,098 on ResNet50's 2,048 channels). With
    ``hidden_channels`` set it is a small MLP of 1x1 convs:
    ``C -> hidden_channels -> ReLU -> num_outputs``.
    """

    def __init__(self, in_channels: int, hidden_channels: int | None = None, num_outputs: int = 2) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_outputs = int(num_outputs)
        if hidden_channels is None:
            self.layers = nn.Sequential(nn.Conv2d(in_channels, num_outputs, kernel_size=1))
        else:
            self.layers = nn.Sequential(
                nn.Conv2d(in_channels, hidden_channels, kernel_size=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden_channels, num_outputs, kernel_size=1),
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
