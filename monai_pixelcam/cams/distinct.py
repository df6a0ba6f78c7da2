"""Seed maps from what sets an image's tissue apart from the images of the other classes.

A CAM shows the evidence *for* a class against the others. A class that the classifier recognises by the
absence of the other classes' evidence (benign against malignant: "no malignant glands anywhere") gets a
diffuse CAM over all its tissue, stroma included, and PixelCAM inherits it as pseudo-labels.

:class:`CrossClassDistinctiveness` uses another signal from the same source model and the same image labels:
tissue that every class shows (stroma, fat, normal parenchyma) finds close matches among the feature cells of
the other classes' training images, while the regions of interest of a class (its glands, its tumour) do not.
The map of a cell is the mean distance of its mid-level feature to its ``k`` nearest neighbours among the
other classes' cells (nearest-neighbour novelty against the other classes, as in discriminative patch mining).

:class:`DistinctCAM` is the geometric mean of a CAM method and that map: a cell scores high only when it is
evidence for its class *and* specific to it, so it keeps a good CAM (tumour against normal tissue) and mends a
diffuse one.

Both need the training images of every class before the first map (:meth:`fit`); :class:`~.store.CAMStore`
does that pass itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_pixelcam.cams.extractors import (
    _eval_mode, _resolve_layer, build_cam, canonical_method_name, normalize_maps,
)

__all__ = ["DISTINCT", "CrossClassDistinctiveness", "DistinctCAM", "build_distinct", "distinct_method_name"]

#: method name of :class:`CrossClassDistinctiveness`; ``"<cam method>+distinct"`` names :class:`DistinctCAM`
DISTINCT = "distinct"


def distinct_method_name(name: str) -> str | None:
    """Canonical ``"distinct"`` or ``"<cam method>+distinct"`` for ``name`` (any case), None when ``name`` is
    no distinctiveness method; ValueError when the CAM part is unknown."""
    parts = [p.strip() for p in str(name).lower().split("+")]
    if parts == [DISTINCT]:
        return DISTINCT
    if len(parts) == 2 and parts[1] == DISTINCT:
        return f"{canonical_method_name(parts[0])}+{DISTINCT}"
    return None


class CrossClassDistinctiveness:
    """Per cell, how far its feature lies from the other classes' training cells (see the module docstring).

    Args:
        model: the source classifier (``x: B x 3 x H x W -> logits``) with an ``encoder`` submodule.
        target_layer: the module (or its dotted name in ``model``) whose output ``B x C x h' x w'`` gives the
            features; default ``"encoder.layer2"``, the mid-level features of a ResNet encoder (tissue texture,
            not yet the class decision; for VGG or ViT name one of their middle blocks). Average-pooled to the
            encoder's output size, so the maps have the shape of the CAMs they replace.
        k: neighbours averaged (>= 1). More neighbours make the score a density, fewer a single match.
        bank_size: cells kept per class, sampled uniformly without replacement over the training set (bounds
            memory: ``classes x bank_size x C`` float32).
        seed: of that sampling, so a store rebuilds identically.
        chunk: query cells per similarity product (bounds memory to ``chunk x bank`` floats).

    Call (after :meth:`fit`): ``maps(x, class_idx)`` with ``x`` ``B x 3 x H x W`` and ``class_idx`` the ``B``
    image labels; returns ``B x 1 x h x w`` float32 in [0, 1] (per-image min-max).
    """

    name = DISTINCT

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = "encoder.layer2",
        k: int = 50,
        bank_size: int = 65536,
        seed: int = 0,
        chunk: int = 1024,
    ) -> None:
        if int(k) < 1 or int(bank_size) < 1 or int(chunk) < 1:
            raise ValueError(f"k, bank_size and chunk must be >= 1, got {k}, {bank_size}, {chunk}.")
        self.model = model
        self.target_layer = _resolve_layer(model, target_layer)
        self.output_layer = _resolve_layer(model, None)
        self.k, self.bank_size, self.chunk = int(k), int(bank_size), int(chunk)
        self._generator = torch.Generator().manual_seed(int(seed))
        self.banks: dict[int, torch.Tensor] = {}
        self._others: dict[tuple[int, str], torch.Tensor] = {}  # other classes' banks, per (label, device)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x C x h x w`` L2-normalised target-layer features at the encoder's output
        size ``h x w``."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a B x C x H x W tensor, got {getattr(x, 'shape', type(x).__name__)}.")
        captured: dict[str, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda m, i, o, key=key: captured.setdefault(key, o))
            for key, layer in (("mid", self.target_layer), ("out", self.output_layer))
        ]
        try:
            with _eval_mode(self.model):
                self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        for key in ("mid", "out"):
            if not isinstance(captured.get(key), torch.Tensor) or captured[key].ndim != 4:
                raise TypeError(f"{key} layer of {type(self.model).__name__} must output B x C x h x w features.")
        mid = F.adaptive_avg_pool2d(captured["mid"].float(), captured["out"].shape[-2:])
        return F.normalize(mid, dim=1)

    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> CrossClassDistinctiveness:
        """Sample the feature bank of every class from ``(images B x 3 x H x W, labels B)`` batches (the
        training set under deterministic eval transforms). Returns ``self``.

        Raises:
            ValueError: fewer than two classes in the data (nothing to be distinct from).
        """
        kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for images, labels in batches:
            feats = self.features(images)
            cells = feats.permute(0, 2, 3, 1).reshape(feats.shape[0], -1, feats.shape[1]).cpu()
            labels = torch.as_tensor(labels).reshape(-1).cpu()
            # Reservoir by random keys: keeping the bank_size largest keys is a uniform sample without
            # replacement of all cells seen so far, in bounded memory; keys are drawn image by image, so the
            # sample does not depend on the batching.
            keys = torch.stack([torch.rand(cells.shape[1], generator=self._generator) for _ in range(len(cells))])
            for label in labels.unique().tolist():
                rows = labels == label
                new_cells, new_keys = cells[rows].reshape(-1, cells.shape[-1]), keys[rows].reshape(-1)
                old_cells, old_keys = kept.get(label, (new_cells[:0], new_keys[:0]))
                all_cells, all_keys = torch.cat([old_cells, new_cells]), torch.cat([old_keys, new_keys])
                if all_keys.numel() > self.bank_size:
                    top = all_keys.topk(self.bank_size).indices
                    all_cells, all_keys = all_cells[top], all_keys[top]
                kept[label] = (all_cells, all_keys)
        if len(kept) < 2:
            raise ValueError(
                f"{type(self).__name__}.fit: the training data holds classes {sorted(kept)}; distinctiveness "
                "needs images of at least two classes."
            )
        self.banks = {label: cells for label, (cells, _) in sorted(kept.items())}
        self._others = {}
        return self

    def _other_classes_bank(self, label: int, device: torch.device) -> torch.Tensor:
        """The cells of every class but ``label`` on ``device``, built once per class and device."""
        key = (label, str(device))
        if key not in self._others:
            others = [bank for other, bank in self.banks.items() if other != label]
            if not others:
                raise ValueError(f"class {label} has no other class in the training banks {sorted(self.banks)}.")
            self._others[key] = torch.cat(others).to(device)
        return self._others[key]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, class_idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
        if not self.banks:
            raise RuntimeError(f"{type(self).__name__}: call fit() on the training images first.")
        labels = torch.as_tensor(class_idx).reshape(-1).tolist()
        feats = self.features(x)
        if len(labels) != feats.shape[0]:
            raise ValueError(f"class_idx holds {len(labels)} labels for {feats.shape[0]} images.")
        b, c, h, w = feats.shape
        out = torch.empty(b, h * w, device=feats.device)
        for i, label in enumerate(labels):
            bank = self._other_classes_bank(int(label), feats.device)
            k = min(self.k, bank.shape[0])
            query = feats[i].reshape(c, -1).T
            for start in range(0, query.shape[0], self.chunk):
                sim = query[start:start + self.chunk] @ bank.T
                # unit vectors: |a - b| = sqrt(2 - 2 cos)
                nearest = sim.topk(k, dim=1).values
                out[i, start:start + self.chunk] = (2.0 - 2.0 * nearest).clamp_(min=0.0).sqrt_().mean(dim=1)
        return normalize_maps(out.reshape(b, 1, h, w))


class DistinctCAM:
    """Geometric mean of a CAM method's map and :class:`CrossClassDistinctiveness` (both in [0, 1]); the
    distinctiveness map alone for an image whose CAM is constant.

    Args:
        method: the CAM method ("cam", "gradcam", "gradcampp", "layercam").
        model: the source classifier.
        target_layer: the CAM's target layer (default ``model.encoder``).
        distinct_layer, k, bank_size, seed: of the distinctiveness map.
        distinct: an existing distinctiveness map to share instead (then the four above are unused).

    Call (after :meth:`fit`): ``maps(x, class_idx)`` -> ``B x 1 x h x w`` float32 in [0, 1].
    """

    def __init__(
        self,
        method: str,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        distinct_layer: nn.Module | str | None = "encoder.layer2",
        k: int = 50,
        bank_size: int = 65536,
        seed: int = 0,
        distinct: CrossClassDistinctiveness | None = None,
    ) -> None:
        self.cam = build_cam(method, model, target_layer)
        self.distinct = distinct or CrossClassDistinctiveness(model, distinct_layer, k=k, bank_size=bank_size, seed=seed)
        self.name = f"{self.cam.name}+{DISTINCT}"
        self.target_layer = self.cam.target_layer

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> DistinctCAM:
        """See :meth:`CrossClassDistinctiveness.fit`."""
        self.distinct.fit(batches)
        return self

    def __call__(self, x: torch.Tensor, class_idx: torch.Tensor | Sequence[int]) -> torch.Tensor:
        cams, distinct = self.cam(x, class_idx=class_idx), self.distinct(x, class_idx)
        # A constant CAM (normalised to zeros: no evidence anywhere) says nothing about where; the
        # distinctiveness map alone then stands, rather than a product that is zero everywhere.
        informative = cams.flatten(1).amax(dim=1).gt(0).view(-1, 1, 1, 1)
        return torch.where(informative, normalize_maps((cams * distinct).sqrt()), distinct)


def build_distinct(
    method: str,
    model: nn.Module,
    target_layer: nn.Module | str | None = None,
    distinct_layer: nn.Module | str | None = "encoder.layer2",
    distinct: CrossClassDistinctiveness | None = None,
    **kwargs,
) -> CrossClassDistinctiveness | DistinctCAM:
    """Extractor for ``"distinct"`` or ``"<cam method>+distinct"``: features from ``distinct_layer``, the CAM
    (of a combination) from ``target_layer``; ``kwargs`` (k, bank_size, seed) go to the distinctiveness map.
    ``distinct``: an existing distinctiveness map to use instead of a new one (then the layer and kwargs are
    unused), so that several extractors share one feature bank."""
    name = distinct_method_name(method)
    if name is None:
        raise ValueError(f"{method!r} is not 'distinct' or '<cam method>+distinct'.")
    if name == DISTINCT:
        return distinct or CrossClassDistinctiveness(model, distinct_layer, **kwargs)
    return DistinctCAM(
        name.split("+")[0], model, target_layer, distinct_layer=distinct_layer, distinct=distinct, **kwargs
    )
