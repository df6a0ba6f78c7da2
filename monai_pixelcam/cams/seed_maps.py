"""The map a stored-CAM cache holds for each training image, by method name, ready to compute.

:func:`prepare_seed_maps` turns a method name (a CAM method, a distinctiveness map, ``"auto"`` or ``"oracle"``)
and a source model into :class:`SeedMaps`: the extractor, already fitted (feature banks) and selected (valpx)
where the method needs it, which maps one batch dict to its maps. :meth:`~.store.CAMStore.build` then only
stores what it gives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.cams.auto import AUTO, DEFAULT_CANDIDATES, ValpxSelectedMaps, selection_batches
from monai_pixelcam.cams.distinct import build_distinct, distinct_method_name
from monai_pixelcam.cams.extractors import CAM, build_cam, canonical_method_name

__all__ = ["ORACLE", "MaskOracle", "SeedMaps", "prepare_seed_maps", "store_method_name"]

#: method name of the ground-truth maps (:class:`MaskOracle`)
ORACLE = "oracle"
#: keys of the batch dicts the maps are computed from
IMAGE, LABEL, MASK = "image", "label", "mask"


def store_method_name(name: str) -> str:
    """Canonical name of a store method: a CAM method, a distinctiveness map (``"distinct"``,
    ``"<cam method>+distinct"``), ``"auto"`` or ``"oracle"``; ValueError lists the known ones."""
    if str(name).lower() in (ORACLE, AUTO):
        return str(name).lower()
    return distinct_method_name(name) or canonical_method_name(name)


class MaskOracle:
    """Ground-truth masks at the feature resolution of a model: the maps perfect pseudo-labels would be.

    Each feature cell gets the fraction of its footprint that the mask covers (area average, so values stay
    in [0, 1] and a cell half on a gland edge is 0.5, like a CAM there). The feature size, and the target
    layer recorded in a store's manifest, come from the model's own forward pass (a :class:`~.extractors.CAM`
    extraction), so oracle maps have exactly the shape of the CAMs they stand in for.

    Args:
        model, target_layer: as for a CAM extractor (default target ``model.encoder``).

    Call: ``oracle(x, masks, class_idx=None)`` with ``x`` ``B x 3 x H x W`` and ``masks`` ``B x 1 x H x W``
    (or ``B x H x W``) in {0, 1}; returns ``B x 1 x h x w`` float32 in [0, 1].
    """

    name = ORACLE

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        self._cam = CAM(model, target_layer)
        self.target_layer = self._cam.target_layer

    def __call__(self, x: torch.Tensor, masks: torch.Tensor, class_idx=None) -> torch.Tensor:
        masks = torch.as_tensor(masks).to(device=x.device, dtype=torch.float32)
        if masks.ndim == 3:
            masks = masks.unsqueeze(1)
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[0] != x.shape[0] or masks.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"MaskOracle: masks must be B x 1 x H x W matching the images {tuple(x.shape)}, "
                f"got {tuple(masks.shape)}."
            )
        size = self._cam(x, class_idx=class_idx).shape[-2:]
        return F.adaptive_avg_pool2d(masks.clamp(0.0, 1.0), size)


def _images(batch: Mapping, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(batch[IMAGE]).to(device=device, dtype=torch.float32)


class _TrainingBatches:
    """``(images B x 3 x H x W, labels B)`` of a training loader, read again on every pass: each feature bank
    samples the training set in a pass of its own (deterministic eval transforms give the same batches)."""

    def __init__(self, loader: Iterable[Mapping], device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __iter__(self):
        return ((_images(b, self.device), torch.as_tensor(b[LABEL])) for b in self.loader)


@dataclass(frozen=True)
class SeedMaps:
    """A ready map extractor and what a store's manifest records of it.

    Attributes:
        method: canonical method name (:func:`store_method_name`).
        extractor: ``(images, class_idx=labels)`` (``(images, masks, class_idx=labels)`` for the oracle)
            -> ``B x 1 x h x w`` float32 in [0, 1].
        target_layer: the module name, in the model, of the layer the maps are taken at.
        device: where the model is and the images go.
        report: ``"auto"``'s choice per class and every candidate's valpx PxAP; None otherwise.
    """

    method: str
    extractor: Callable[..., torch.Tensor]
    target_layer: str
    device: torch.device
    report: dict[str, Any] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The batch keys :meth:`__call__` reads."""
        return (IMAGE, LABEL, MASK) if self.method == ORACLE else (IMAGE, LABEL)

    def __call__(self, batch: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
        """``(maps, labels)`` of one batch dict ``{image: B x 3 x H x W, label: B[, mask: B x 1 x H x W]}``:
        the true-class maps ``B x 1 x h x w`` float32 in [0, 1] and the labels ``B`` (int64)."""
        for key in self.keys:
            if key not in batch:
                raise KeyError(f"{self.method} maps: the batch has no {key!r} key (keys: {sorted(batch)}).")
        images = _images(batch, self.device)
        labels = torch.as_tensor(batch[LABEL]).reshape(-1).to(self.device)
        if self.method == ORACLE:
            return self.extractor(images, batch[MASK], class_idx=labels), labels
        return self.extractor(images, class_idx=labels), labels


def prepare_seed_maps(
    method: str,
    model: nn.Module,
    train_loader: Iterable[Mapping],
    device: str | torch.device | None = None,
    target_layer: nn.Module | str | None = None,
    distinct_kwargs: Mapping | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    selection_loader: Iterable[Mapping] | None = None,
) -> SeedMaps:
    """The maps of ``method`` from ``model``, ready to compute: the model is moved to ``device``, and the
    methods that need data first get it (the distinctiveness banks one pass over ``train_loader``; ``"auto"``
    its per-class choice on ``selection_loader``).

    Args:
        method: "cam", "gradcam", "gradcampp" or "layercam"; "distinct" or "<cam method>+distinct" (the
            maps of :mod:`.distinct`); "auto" (per class, the best of ``candidates`` on ``selection_loader``,
            :class:`~.auto.ValpxSelectedMaps`); or "oracle" (the items' ground-truth masks at feature
            resolution, :class:`MaskOracle`).
        model: the source classifier (e.g. ``WSOLClassifier``), weights loaded.
        train_loader: batch dicts ``{image: B x 3 x H x W float in [0, 1], label: B}`` of the images to be
            stored (deterministic eval transforms); read only by the methods that fit on data.
        device: where to compute; default the model's device.
        target_layer: passed to the extractor (default ``model.encoder``).
        distinct_kwargs: for a distinctiveness method or "auto", arguments of
            :func:`~monai_pixelcam.cams.distinct.build_distinct` (``distinct_layer``, ``k``, ``bank_size``);
            for "auto" ``distinct_layer`` may list layers, each read in a pass over ``train_loader``.
        candidates, selection_loader: for "auto": the methods to choose from, and valpx batch dicts
            ``{image, mask, label}`` (deterministic eval transforms).

    Raises:
        ValueError: an unknown method (the message lists the known ones), or "auto" without
            ``selection_loader``.
    """
    method = store_method_name(method)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    model.to(device)
    report = None
    if method == ORACLE:
        extractor = MaskOracle(model, target_layer)
    elif method == AUTO:
        if selection_loader is None:
            raise ValueError("seed maps 'auto' are chosen on valpx; pass selection_loader.")
        extractor = ValpxSelectedMaps(model, candidates, target_layer, **(distinct_kwargs or {}))
    elif distinct_method_name(method):
        if isinstance((distinct_kwargs or {}).get("distinct_layer"), (list, tuple)):
            raise ValueError(f"seed maps {method!r} take one distinct_layer; a list of layers is for 'auto', "
                             f"which chooses among them on valpx (got {distinct_kwargs['distinct_layer']}).")
        extractor = build_distinct(method, model, target_layer, **(distinct_kwargs or {}))
    else:
        extractor = build_cam(method, model, target_layer)
    if hasattr(extractor, "fit"):  # maps that need the training set first (feature banks)
        extractor.fit(_TrainingBatches(train_loader, device))
    if method == AUTO:
        extractor.select(selection_batches(selection_loader, device))
        report = extractor.report
    layer_name = next(n for n, m in model.named_modules() if m is extractor.target_layer)
    return SeedMaps(method, extractor, layer_name, device, report)
