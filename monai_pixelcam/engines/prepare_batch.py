"""Batch preparation for engines whose target is a dict (image label plus CAM, or plus mask)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.engines.utils import PrepareBatch

__all__ = ["DictTargetPrepareBatch"]


class DictTargetPrepareBatch(PrepareBatch):
    """Return ``(image, {key: batch[key] for key in target_keys})`` from a collated batch dict.

    PixelCAM training uses ``target_keys=("label", "cam")``: the CAM arrives already augmented with the same
    spatial draw as the image, and the loss draws fresh pixel seeds from it inside the iteration.
    Evaluation uses ``("label", "mask")`` with ``labels_to_inferer=True``, so that a CAM inferer can explain
    the true class (the evaluation protocol of Choe et al. 2020) while a PixelCAM inferer ignores it.

    Args:
        target_keys: batch keys gathered into the target dict; ``label`` becomes a ``B`` long tensor.
        image_key: key of the ``B x 3 x H x W`` input.
        labels_to_inferer: also pass ``labels=`` to the inferer (4-tuple form of MONAI's prepare_batch).
    """

    def __init__(
        self, target_keys: Sequence[str] = ("label",), image_key: str = "image", labels_to_inferer: bool = False
    ) -> None:
        self.target_keys = tuple(target_keys)
        self.image_key = image_key
        self.labels_to_inferer = labels_to_inferer

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        missing = [k for k in (self.image_key, *self.target_keys) if k not in batchdata]
        if missing:
            raise KeyError(f"batch has no {missing}; it holds {sorted(batchdata)}")
        image = torch.as_tensor(batchdata[self.image_key]).to(device=device, non_blocking=non_blocking, **kwargs)
        targets = {}
        for key in self.target_keys:
            value = torch.as_tensor(batchdata[key])
            if key == "label":
                value = value.reshape(-1).long()
            targets[key] = value.to(device=device, non_blocking=non_blocking)
        if self.labels_to_inferer and "label" in targets:
            return image, targets, (), {"labels": targets["label"]}
        return image, targets
