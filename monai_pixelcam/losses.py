"""Losses of PixelCAM training: partial cross-entropy on pixel seeds, and the multi-task loss.

``PixelCAMLoss`` = CE(image logits, image label) + lambda * partial-CE(pixel logits, seeds), with seeds drawn
afresh from the (augmented) CAM at every call, i.e. every training iteration.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.seeding import PixelSeeder

__all__ = ["OneVsRestLoss", "PartialCrossEntropyLoss", "PixelCAMLoss", "SEED_RESOLUTIONS", "resize_cam"]

SEED_RESOLUTIONS = ("feature", "input")


class PartialCrossEntropyLoss(nn.Module):
    """Cross-entropy over seeded pixels only, averaged over all seeded pixels of the batch.

    Unlike ``F.cross_entropy(..., ignore_index=...)`` with mean reduction, which returns NaN (0 / 0) when no
    pixel of the batch is seeded, this returns 0, still attached to the graph (its gradient is 0), so a
    batch without seeds neither breaks training nor trips ``TerminateOnNan``.

    Args:
        ignore_index: seed value of unlabelled pixels.

    Forward:
        logits: B x C x h x w float (C = 2 for background / foreground).
        seeds: B x h x w (or B x 1 x h x w) long, values in ``0 .. C-1`` or ``ignore_index``.

    Returns:
        scalar tensor.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)

    def forward(self, logits: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 4:
            raise ValueError(f"logits must be B x C x h x w, got shape {tuple(logits.shape)}")
        if seeds.ndim == 4 and seeds.shape[1] == 1:
            seeds = seeds[:, 0]
        if seeds.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"seeds shape {tuple(seeds.shape)} does not match logits B x h x w "
                f"{(logits.shape[0], *logits.shape[2:])}"
            )
        seeds = seeds.long()
        total = F.cross_entropy(logits, seeds, ignore_index=self.ignore_index, reduction="sum")
        count = (seeds != self.ignore_index).sum()
        return total / count.clamp_min(1)


class OneVsRestLoss(nn.Module):
    """Image-label loss that scores every class on its own: the mean over classes of the binary cross-entropy
    of ``sigmoid(logit_k)`` against ``[label == k]`` (``F.binary_cross_entropy_with_logits`` on one-hot
    targets).

    Why not softmax cross-entropy: softmax only constrains the differences between class logits, so a class
    may be "explained" by evidence that is merely less typical of the other classes, such as tissue that every
    image contains (stroma). One-vs-rest makes each class logit high on its own images and low on all others,
    so whatever both classes' images contain cannot raise it. With an image head whose class score is a
    pooling of non-negative per-position evidence (:class:`~monai_pixelcam.networks.evidence.PositiveEvidenceHead`)
    this is the multiple-instance "presence" assumption: a class is present where its own evidence is. Class
    predictions stay ``argmax`` of the logits.

    Forward:
        logits: B x K float.
        target: B (or B x 1) integer labels in ``0 .. K-1``.

    Returns:
        scalar tensor.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2:
            raise ValueError(f"logits must be B x K, got shape {tuple(logits.shape)}")
        target = torch.as_tensor(target, device=logits.device).reshape(-1)
        if target.numel() != logits.shape[0]:
            raise ValueError(f"target must hold {logits.shape[0]} labels, got shape {tuple(target.shape)}")
        if target.is_floating_point() and not torch.equal(target, target.round()):
            raise ValueError("target must hold integer class indices")
        target = target.long()
        if bool(((target < 0) | (target >= logits.shape[1])).any()):
            raise ValueError(f"labels {target.tolist()} out of range for {logits.shape[1]} classes")
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(target, logits.shape[1]).to(logits.dtype))


class PixelCAMLoss(nn.Module):
    """Multi-task PixelCAM loss: ``L_cls(cls, label) + lambda_pix * pCE(pix, seeds)``, ``L_cls`` = CE by default.

    Seeds are drawn by ``seeder`` from ``target["cam"]`` at every call, with the image labels (for the
    seeder's negative classes), under ``no_grad``: the CAM is a fixed target.

    Args:
        seeder: a :class:`~monai_pixelcam.seeding.PixelSeeder` (e.g. ``ThresholdSeeder``).
        lambda_pix: weight of the pixel term (1 in the paper).
        seed_resolution: where seeds are drawn:

            - ``"feature"``: the CAM (B x 1 x H x W) is resized to the pixel logits' h x w and seeds are drawn
              there. Downsampling uses area averaging (``adaptive_avg_pool2d``: each low-resolution pixel
              is the mean of the CAM over its footprint, which is anti-aliased and keeps values in [0, 1]);
              upsampling, should the CAM be smaller, uses bilinear interpolation.
            - ``"input"``: the pixel logits are upsampled bilinearly to the CAM's H x W and seeds are drawn
              at that resolution.
        generator: optional ``torch.Generator`` (on the CAM's device) passed to the seeder; None uses
            torch's global generator.
        classification_loss: ``loss(cls logits B x K, labels B)`` of the image head; None is softmax
            cross-entropy. Give the loss the source model was trained with (e.g. :class:`OneVsRestLoss`).

    Forward:
        pred: ``{"cls": B x K logits, "pix": B x 2 x h x w logits}``.
        target: ``{"label": B (or B x 1) integer labels, "cam": B x 1 x H x W (or B x H x W) float in [0, 1]}``.

    Returns:
        scalar tensor. ``last_terms`` then gives the terms of that call as floats: ``loss_cls``,
        ``loss_pix`` (unweighted), ``n_fg`` and ``n_bg`` (mean seeds per image); they are kept as detached
        tensors and converted (one device sync) only when read.
    """

    def __init__(
        self,
        seeder: PixelSeeder,
        lambda_pix: float = 1.0,
        seed_resolution: str = "feature",
        generator: torch.Generator | None = None,
        classification_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if seed_resolution not in SEED_RESOLUTIONS:
            raise ValueError(f"seed_resolution must be one of {SEED_RESOLUTIONS}, got {seed_resolution!r}")
        if not callable(seeder):
            raise TypeError(f"seeder must be callable (a PixelSeeder), got {type(seeder).__name__}")
        self.seeder = seeder
        self.lambda_pix = float(lambda_pix)
        self.seed_resolution = seed_resolution
        self.generator = generator
        self.classification_loss = nn.CrossEntropyLoss() if classification_loss is None else classification_loss
        self.pixel_loss = PartialCrossEntropyLoss(ignore_index=getattr(seeder, "ignore_index", -100))
        self._terms: torch.Tensor | None = None

    @property
    def last_terms(self) -> dict[str, float]:
        """Terms of the last call: ``{"loss_cls", "loss_pix", "n_fg", "n_bg"}`` floats (empty before any call)."""
        if self._terms is None:
            return {}
        return dict(zip(("loss_cls", "loss_pix", "n_fg", "n_bg"), self._terms.tolist()))

    def forward(self, pred: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> torch.Tensor:
        cls_logits, pix_logits = _get(pred, "cls", "pred"), _get(pred, "pix", "pred")
        label, cam = _get(target, "label", "target"), _get(target, "cam", "target")
        batch = cls_logits.shape[0]
        label = torch.as_tensor(label, device=cls_logits.device).reshape(-1)
        if label.numel() != batch:
            raise ValueError(f"target['label'] must hold {batch} labels (B or B x 1), got shape {tuple(label.shape)}")
        if label.is_floating_point() and not torch.equal(label, label.round()):
            raise ValueError("target['label'] must hold integer class indices")
        label = label.long()
        if pix_logits.ndim != 4 or pix_logits.shape[0] != batch:
            raise ValueError(f"pred['pix'] must be B x 2 x h x w with B={batch}, got {tuple(pix_logits.shape)}")
        if cam.ndim == 3:
            cam = cam.unsqueeze(1)
        if cam.ndim != 4 or cam.shape[:2] != (batch, 1):
            raise ValueError(f"target['cam'] must be B x 1 x H x W with B={batch}, got {tuple(cam.shape)}")

        with torch.no_grad():
            cam = cam.detach().to(device=pix_logits.device, dtype=torch.float32)
            if self.seed_resolution == "feature":
                cam = resize_cam(cam, pix_logits.shape[2:])
            seeds = self.seeder(cam, labels=label, generator=self.generator)
        if self.seed_resolution == "input" and pix_logits.shape[2:] != cam.shape[2:]:
            pix_logits = F.interpolate(pix_logits, size=cam.shape[2:], mode="bilinear", align_corners=False)

        loss_cls = self.classification_loss(cls_logits, label)
        loss_pix = self.pixel_loss(pix_logits, seeds)
        with torch.no_grad():
            n_fg = (seeds == 1).sum() / batch
            n_bg = (seeds == 0).sum() / batch
            self._terms = torch.stack([loss_cls.detach().float(), loss_pix.detach().float(), n_fg, n_bg])
        return loss_cls + self.lambda_pix * loss_pix


def resize_cam(cam: torch.Tensor, size) -> torch.Tensor:
    """Resize CAMs B x 1 x H x W in [0, 1] to ``size`` (h, w): area average down, bilinear up; stays in [0, 1]."""
    size = tuple(int(s) for s in size)
    if tuple(cam.shape[2:]) == size:
        return cam
    if cam.shape[2] >= size[0] and cam.shape[3] >= size[1]:
        return F.adaptive_avg_pool2d(cam, size)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)


def _get(mapping: Mapping[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    if not isinstance(mapping, Mapping) or key not in mapping:
        keys = list(mapping) if isinstance(mapping, Mapping) else type(mapping).__name__
        raise KeyError(f"PixelCAMLoss: {name} must be a dict with key {key!r}, got {keys}")
    return mapping[key]
