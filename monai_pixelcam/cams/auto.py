"""Seed maps chosen per class on valpx: the method whose maps localize that class best on the pixel-annotated
validation images, as the protocol chooses thresholds and B-LOC checkpoints there.

Which map gives good pseudo-labels depends on the data: a CAM shows a class recognised by its own evidence
well (tumour against normal tissue) and a class recognised by the absence of the others' evidence badly
(benign against malignant glands), where :mod:`.distinct` maps do better. The valpx images say which is which
for the data at hand, with a handful of masks and no look at test.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.cams.distinct import DISTINCT, CrossClassDistinctiveness, build_distinct, distinct_method_name
from monai_pixelcam.cams.extractors import _resolve_layer, build_cam, canonical_method_name
from monai_pixelcam.metrics.localization import PixelHistogram

__all__ = ["AUTO", "DEFAULT_CANDIDATES", "ValpxSelectedMaps", "selection_batches"]

#: method name of :class:`ValpxSelectedMaps`
AUTO = "auto"
#: what it chooses from unless told otherwise: the CAM, the distinctiveness map and their geometric mean
DEFAULT_CANDIDATES = ("cam", DISTINCT, f"cam+{DISTINCT}")


class ValpxSelectedMaps:
    """Per class, the candidate map method with the highest PxAP on the valpx images of that class.

    Args:
        model: the source classifier.
        candidates: method names: CAM methods ("cam", "gradcam", "gradcampp", "layercam"), "distinct" and
            "<cam method>+distinct". The first is the fallback for a class that valpx cannot judge (a negative
            class, or none of its images in valpx); on a tie the earlier candidate wins.
        target_layer: the CAM methods' target layer (default ``model.encoder``).
        distinct_layer, k, bank_size, seed: of the :class:`~.distinct.CrossClassDistinctiveness` map that the
            distinct candidates share. ``distinct_layer`` may list several layers: then every distinct
            candidate is tried from each, named ``"<candidate>@<layer>"`` (e.g. ``"distinct@encoder.layer2"``),
            so that valpx also chooses the layer, whose best choice depends on the tissue's scale.

    Use: :meth:`fit` on the training batches (samples the distinctiveness banks), :meth:`select` on valpx
    batches, then call ``maps(x, class_idx)`` -> ``B x 1 x h x w`` float32 in [0, 1], each image's map from
    its class's method. :attr:`report` holds the choice and the valpx PxAP of every candidate.
    """

    name = AUTO

    def __init__(
        self,
        model: nn.Module,
        candidates: Sequence[str] = DEFAULT_CANDIDATES,
        target_layer: nn.Module | str | None = None,
        distinct_layer: nn.Module | str | Sequence[str] | None = "encoder.layer2",
        k: int = 50,
        bank_size: int = 65536,
        seed: int = 0,
    ) -> None:
        methods = [distinct_method_name(c) or canonical_method_name(c) for c in candidates]
        if not methods or len(set(methods)) != len(methods):
            raise ValueError(f"candidates must be distinct method names, at least one, got {list(candidates)}.")
        layers = list(distinct_layer) if isinstance(distinct_layer, (list, tuple)) else [distinct_layer]
        if not layers or len(set(map(str, layers))) != len(layers):
            raise ValueError(f"distinct_layer: a layer or a list of different layers, got {distinct_layer!r}.")
        self.distincts = {  # one feature bank per layer, shared by that layer's distinct candidates
            layer: CrossClassDistinctiveness(model, layer, k=k, bank_size=bank_size, seed=seed)
            for layer in layers
        } if any(distinct_method_name(m) for m in methods) else {}  # fmt: skip
        self.extractors = {}
        for method in methods:
            if not distinct_method_name(method):
                self.extractors[method] = build_cam(method, model, target_layer)
                continue
            for layer, distinct in self.distincts.items():
                name = method if len(layers) == 1 else f"{method}@{layer}"
                self.extractors[name] = build_distinct(method, model, target_layer, distinct=distinct)
        self.candidates = list(self.extractors)
        self.target_layer = _resolve_layer(model, target_layer)  # what the manifest names
        self.choice: dict[int, str] = {}
        self.report: dict = {}

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> ValpxSelectedMaps:
        """Sample the distinctiveness banks from the training batches (a no-op without distinct candidates).
        With several layers each bank reads the batches once, so ``batches`` must be re-iterable (a loader,
        not a generator): holding the training set in memory instead would not scale."""
        if len(self.distincts) > 1 and iter(batches) is batches:
            raise TypeError("several distinct layers need re-iterable training batches (one pass per layer's "
                            "bank), not a one-pass iterator.")
        for distinct in self.distincts.values():
            distinct.fit(batches)
        return self

    def select(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[int, str]:
        """Choose each class's method from ``(images B x 3 x H x W, masks B x 1 x H x W, labels B)`` valpx
        batches: PxAP of every candidate's true-class maps, upsampled (bilinear) to the masks, per class.

        Returns:
            ``{class index: method}`` for the classes of the valpx images with mask pixels; others use the first
            candidate when called.
        """
        histogram = PixelHistogram()
        counts: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        for images, masks, labels in batches:
            masks = (torch.as_tensor(masks).float() > 0.5).float()
            labels = torch.as_tensor(labels).reshape(-1)
            for method, extractor in self.extractors.items():
                maps = F.interpolate(extractor(images, labels), size=masks.shape[-2:], mode="bilinear",
                                     align_corners=False).clamp(0.0, 1.0)
                for label in labels.unique().tolist():
                    rows = labels == label
                    add = histogram(maps[rows], masks[rows].to(maps.device)).cpu()
                    counts[label][method] = counts[label].get(method, 0) + add
        pxap = {
            label: {m: 100.0 * histogram.average_precision(c) for m, c in per.items()}
            for label, per in sorted(counts.items()) if int(next(iter(per.values()))[1].sum()) > 0
        }
        self.choice = {label: max(scores, key=lambda m: (scores[m], -self.candidates.index(m)))
                       for label, scores in pxap.items()}
        self.report = {
            "candidates": self.candidates,
            "choice": {str(k): v for k, v in self.choice.items()},
            "valpx_pxap": {str(k): {m: round(v, 2) for m, v in s.items()} for k, s in pxap.items()},
        }
        return self.choice

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, class_idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
        if not self.report:
            raise RuntimeError(f"{type(self).__name__}: call select() on the valpx images first.")
        labels = torch.as_tensor(class_idx).reshape(-1)
        methods = [self.choice.get(int(label), self.candidates[0]) for label in labels.tolist()]
        out: torch.Tensor | None = None
        for method in dict.fromkeys(methods):
            rows = torch.tensor([m == method for m in methods], device=x.device)
            maps = self.extractors[method](x[rows], labels[rows])
            if out is None:
                out = maps.new_empty((x.shape[0], *maps.shape[1:]))
            out[rows] = maps
        return out


def selection_batches(
    loader: Iterable[Mapping], device: torch.device | str, image_key: str = "image", mask_key: str = "mask",
    label_key: str = "label",
) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images, masks, labels)`` of each batch dict of a valpx ``loader``; KeyError names a missing key."""
    for batch in loader:
        for key in (image_key, mask_key, label_key):
            if key not in batch:
                raise KeyError(f"valpx batch has no {key!r} key (keys: {sorted(batch)}).")
        yield (torch.as_tensor(batch[image_key]).to(device=device, dtype=torch.float32),
               torch.as_tensor(batch[mask_key]), torch.as_tensor(batch[label_key]))
