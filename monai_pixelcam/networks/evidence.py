"""An image head that scores each class only by positive, class-specific evidence at feature-map positions."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["PositiveEvidenceHead"]


class PositiveEvidenceHead(nn.Module):
    """Multiple-instance image head: non-negative class evidence per position, top-k mean pooled.

    Every position ``i`` of the feature map ``f`` (``B x C x h x w``, ReLU outputs, so >= 0) gets the class
    evidence ``e_k(i) = w_k . f_i`` with non-negative weights ``w_k = |v_k|``; the logit of class ``k`` is
    the mean of its ``ceil(top_fraction * h * w)`` largest ``e_k(i)`` plus a bias. ``class_weights()`` is
    ``|v|`` (``K x C``), so the CAM of class ``k`` is exactly the evidence map the logit pools.

    Why: a GAP + linear head trained with softmax cross-entropy may score a class by evidence that is
    negative for the other class, or by tissue every image has, because only logit differences are
    constrained. Its map for a class defined by "absence" (benign: no malignant epithelium) then lights
    whatever is least like the other class, e.g. the stroma. Here a class score can only rise with features
    present at some positions (non-negative weights on non-negative features, no negative evidence), and
    trained one-vs-rest (:class:`~monai_pixelcam.losses.OneVsRestLoss`) it must also stay low on the other
    classes' images, so tissue shared by all classes cannot carry it: the multiple-instance assumption that
    a class is present where its own evidence is. Top-k pooling (Durand et al., WILDCAT, CVPR 2017, without
    their negative-evidence term) lets a small region decide, as in histology, where the region of interest
    may cover a fraction of the tile; ``top_fraction`` is a lower bound on that fraction.

    Weights are parametrised as ``|v|`` rather than clamped, so a weight driven below zero keeps its
    gradient, and weight decay on ``v`` shrinks evidence towards 0.

    Args:
        in_channels: ``C``.
        num_classes: ``K``.
        top_fraction: fraction in (0, 1] of positions pooled per class (1 = mean over all positions).

    Forward: ``features`` ``B x C x h x w`` -> ``B x K`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, top_fraction: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < float(top_fraction) <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.top_fraction = float(top_fraction)
        # small positive start: every class begins with weak evidence from every channel
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_channels).uniform_(0.0, 0.05))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def class_weights(self) -> torch.Tensor:
        """``K x C`` non-negative channel weights of the class evidence."""
        return self.weight.abs()

    def evidence(self, features: torch.Tensor) -> torch.Tensor:
        """Class evidence ``B x K x h x w`` (>= 0 for non-negative features) of ``features`` ``B x C x h x w``."""
        return torch.einsum("kc,bchw->bkhw", self.class_weights(), features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 4 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"PositiveEvidenceHead expects B x {self.in_channels} x h x w features, got {list(features.shape)}"
            )
        scores = self.evidence(features).flatten(2)
        k = max(1, int(math.ceil(self.top_fraction * scores.shape[-1])))
        return scores.topk(k, dim=-1).values.mean(dim=-1) + self.bias
