"""Class activation map extractors for WSOL classifiers.

:class:`BaseCAM` runs the model, catches the output of one target layer (by default ``model.encoder``,
the last feature map ``B x C x h x w``) with a forward hook that lives only for that call and, for
gradient methods, gets the gradient of each sample's class score with respect to that output by
``torch.autograd.grad``. A subclass only says how to weigh the channels (:meth:`BaseCAM.weights`); the
map is ``relu(sum_c weight_c * activation_c)``, optionally upsampled, then min-max normalised per image.

Design choices:

- The score that is differentiated is ``sum_b logits[b, class_idx[b]]``. In eval mode the samples of a
  batch do not interact, so the gradient of that sum with respect to sample ``b``'s activations is the
  gradient of sample ``b``'s own score: a batch gives the same maps as one-by-one. (``monai.visualize``
  with ``class_idx=None`` takes ``logits[:, argmax]`` of a batch and mixes samples.)
- Gradients are taken with respect to the target layer's output only, so the parameters' ``.grad`` are
  never touched and the encoder below the target layer is not backpropagated through.
- Hooks are registered at the start of each call and removed in ``finally``: nothing stays attached to the
  model, so a training forward pass of the same model is never intercepted.
- The model is put in eval mode for the call and every submodule's train/eval flag is restored after.
- Unlike ``monai.visualize`` the maps are not inverted: 1 is the most class-relevant position.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.utils import look_up_option

__all__ = [
    "BaseCAM",
    "CAM",
    "GradCAM",
    "GradCAMpp",
    "LayerCAM",
    "CAM_METHODS",
    "build_cam",
    "canonical_method_name",
    "normalize_maps",
]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a batch to [0, 1].

    Args:
        maps: ``B x 1 x h x w`` (any trailing shape works: each of the ``B`` entries is one image).

    Returns:
        float tensor of the same shape in [0, 1]. A constant map (spread at most 1e-6 of its magnitude,
        i.e. float rounding noise) becomes all zeros instead of NaN or amplified noise.
    """
    flat = maps.reshape(maps.shape[0], -1).float()
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    magnitude = torch.maximum(lo.abs(), hi.abs())
    informative = span > torch.clamp(1e-6 * magnitude, min=torch.finfo(torch.float32).tiny)
    out = torch.where(informative, (flat - lo) / torch.where(informative, span, torch.ones_like(span)), 0.0)
    return out.clamp_(0.0, 1.0).reshape(maps.shape)


def _resolve_layer(model: nn.Module, target_layer: nn.Module | str | None) -> nn.Module:
    if target_layer is None:
        layer = getattr(model, "encoder", None)
        if not isinstance(layer, nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no `encoder` submodule; pass target_layer (a module or its dotted name)."
            )
        return layer
    if isinstance(target_layer, str):
        try:
            return model.get_submodule(target_layer)
        except AttributeError as e:
            raise ValueError(f"target_layer {target_layer!r} is not a submodule of {type(model).__name__}.") from e
    if not any(m is target_layer for m in model.modules()):
        raise ValueError(f"target_layer {type(target_layer).__name__} is not a submodule of {type(model).__name__}.")
    return target_layer


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside, every submodule's own mode back on exit. Unlike MONAI's ``eval_mode``, which
    calls ``train()`` on the top module, a submodule left in eval mode on purpose (a frozen BatchNorm) stays so;
    gradients are left as they are."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


def _logits(output) -> torch.Tensor:
    """Image logits ``B x K`` from a classifier output: a tensor, or a PixelCAMNet-style dict with ``cls``."""
    if isinstance(output, Mapping):
        if "cls" not in output:
            raise TypeError(f"model returned a dict without 'cls' logits (keys: {sorted(output)}).")
        output = output["cls"]
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise TypeError(f"model must return B x K logits, got {shape}.")
    return output


def _class_index(class_idx, labels, logits: torch.Tensor) -> torch.Tensor:
    """``B`` long tensor of the class to explain per sample: class_idx, else labels, else the prediction."""
    b, k = logits.shape
    chosen = class_idx if class_idx is not None else labels
    if chosen is None:
        return logits.detach().argmax(dim=1)
    idx = torch.as_tensor(chosen, device=logits.device)
    if idx.is_floating_point() and not torch.equal(idx, idx.round()):
        raise ValueError(f"class indices must be integers, got {idx.tolist()}.")
    idx = idx.long()
    if idx.ndim == 0:
        idx = idx.expand(b)
    elif idx.numel() == b:
        idx = idx.reshape(b)  # accepts B x 1 labels as collated by some loaders
    else:
        raise ValueError(
            f"class_idx/labels must be an int or hold one index per sample (B={b}), got shape {tuple(idx.shape)}."
        )
    if bool(((idx < 0) | (idx >= k)).any()):
        raise ValueError(f"class indices {idx.tolist()} out of range for {k} classes.")
    return idx


class BaseCAM(ABC):
    """Hook a target layer and turn its activations (and gradients) into per-image class maps.

    Args:
        model: a classifier ``x: B x 3 x H x W -> B x K`` logits (a tensor, or a dict whose ``cls`` entry is
            the logits), e.g. ``WSOLClassifier``.
        target_layer: the module whose output ``B x C x h x w`` is explained, or its dotted name in
            ``model``; default ``model.encoder``.

    Calling the extractor returns ``B x 1 x h x w`` float32 maps in [0, 1] (see :meth:`extract`).
    """

    #: registry name, recorded in CAM stores
    name: str = ""
    #: whether :meth:`weights` needs the gradients; when False no backward pass is run
    needs_gradients: bool = True

    def __init__(self, model: nn.Module, target_layer: nn.Module | str | None = None) -> None:
        self.model = model
        self.target_layer = _resolve_layer(model, target_layer)

    @abstractmethod
    def weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, logits: torch.Tensor, class_idx: torch.Tensor
    ) -> torch.Tensor:
        """Channel weights, broadcastable to ``activations``.

        Args:
            activations: ``B x C x h x w`` target-layer output.
            gradients: ``B x C x h x w`` gradient of each sample's class score w.r.t. ``activations``
                (None when ``needs_gradients`` is False).
            logits: ``B x K``.
            class_idx: ``B`` long, the class explained for each sample.

        Returns:
            ``B x C x 1 x 1`` or ``B x C x h x w``; the raw map is ``sum_c weights * activations``.
        """

    def __call__(
        self,
        x: torch.Tensor,
        class_idx: torch.Tensor | Sequence[int] | int | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
        upsample: bool | int | Sequence[int] = False,
    ) -> torch.Tensor:
        """Maps only; see :meth:`extract`."""
        return self.extract(x, class_idx=class_idx, labels=labels, upsample=upsample)[0]

    def extract(
        self,
        x: torch.Tensor,
        class_idx: torch.Tensor | Sequence[int] | int | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
        upsample: bool | int | Sequence[int] = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class maps and the logits of the same forward pass.

        Args:
            x: ``B x 3 x H x W`` input batch.
            class_idx: class explained per sample: a ``B`` tensor/sequence, or one int for all samples.
            labels: used as ``class_idx`` when ``class_idx`` is None (the true class); when both are None
                the predicted class (argmax of the logits) is used.
            upsample: False keeps the target layer's ``h x w``; True resizes (bilinear) to the input's
                ``H x W``; an int or ``(h', w')`` resizes to that size. Normalisation comes after resizing,
                so the output always spans exactly [0, 1] unless the map is constant (then zeros).

        Returns:
            ``(maps, logits)``: maps ``B x 1 x h x w`` float32 in [0, 1] (ReLU then per-image min-max),
            logits ``B x K`` detached.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a B x C x H x W tensor, got {getattr(x, 'shape', type(x).__name__)}.")
        captured: list[torch.Tensor] = []

        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise TypeError(
                    f"target layer {type(module).__name__} must output a B x C x h x w tensor, "
                    f"got {getattr(output, 'shape', type(output).__name__)}."
                )
            if not self.needs_gradients:
                captured.append(output.detach())
                return None
            # A fresh leaf makes autograd.grad w.r.t. the activations work even for frozen encoders and stops
            # the backward pass here; the clone keeps downstream in-place ops off the leaf.
            leaf = output.detach().requires_grad_(True)
            captured.append(leaf)
            return leaf.clone()

        handle = self.target_layer.register_forward_hook(hook)
        try:
            with _eval_mode(self.model), torch.set_grad_enabled(self.needs_gradients):
                logits = _logits(self.model(x))
                if len(captured) != 1:
                    raise RuntimeError(
                        f"target layer {type(self.target_layer).__name__} ran {len(captured)} times in one forward "
                        "pass; it must run exactly once."
                    )
                activations = captured[0]
                idx = _class_index(class_idx, labels, logits)
                gradients = None
                if self.needs_gradients:
                    score = logits.gather(1, idx[:, None]).sum()
                    (gradients,) = torch.autograd.grad(score, activations, allow_unused=True)
                    if gradients is None:
                        raise RuntimeError(
                            "the logits do not depend on the target layer's output (is it computed under no_grad?)."
                        )
        finally:
            handle.remove()
        with torch.no_grad():
            activations = activations.detach()
            weights = self.weights(activations, gradients, logits.detach(), idx)
            maps = F.relu((weights * activations).sum(dim=1, keepdim=True)).float()
            if not bool(torch.isfinite(maps).all()):
                raise FloatingPointError(f"{type(self).__name__}: non-finite values in the class maps.")
            size = _upsample_size(upsample, x)
            if size is not None and tuple(maps.shape[-2:]) != size:
                maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            return normalize_maps(maps), logits.detach()


def _upsample_size(upsample, x: torch.Tensor) -> tuple[int, int] | None:
    if upsample is False or upsample is None:
        return None
    if upsample is True:
        return tuple(x.shape[-2:])
    if isinstance(upsample, int):
        return (upsample, upsample)
    size = tuple(int(s) for s in upsample)
    if len(size) != 2:
        raise ValueError(f"upsample must be a bool, an int or (h, w), got {upsample!r}.")
    return size


class CAM(BaseCAM):
    """CAM (Zhou et al., CVPR 2016): the image head's class weights applied at every position.

    Uses ``model.image_head.class_weights()`` (``K x C``; :class:`~monai_pixelcam.networks.WSOLClassifier` and
    :class:`~monai_pixelcam.networks.PixelCAMNet` both name their image head so), so the target layer must be
    the one that head pools (the default, ``model.encoder``). No backward pass.
    """

    name = "cam"
    needs_gradients = False

    def weights(self, activations, gradients, logits, class_idx):
        head = getattr(self.model, "image_head", None)
        if head is None or not callable(getattr(head, "class_weights", None)):
            raise TypeError(f"CAM needs model.image_head.class_weights(); {type(self.model).__name__} has none.")
        w = head.class_weights().detach().to(activations)
        if w.ndim != 2 or w.shape[1] != activations.shape[1]:
            raise ValueError(
                f"class_weights() has shape {tuple(w.shape)}, expected K x {activations.shape[1]} "
                "(the target layer's channels)."
            )
        return w[class_idx][:, :, None, None]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017): channel weight = spatial mean of the gradient."""

    name = "gradcam"

    def weights(self, activations, gradients, logits, class_idx):
        return gradients.mean(dim=(2, 3), keepdim=True)


class GradCAMpp(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19), with exponential scores.

    ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` and weight ``sum_ij alpha_ij relu(g_ij)``, as in
    the paper and pytorch-grad-cam. The ``exp(score)`` factor of the paper multiplies all weights of a sample
    by one positive number, which min-max normalisation removes, so it is left out (it overflows for large
    logits). ``monai.visualize.GradCAMpp`` uses ``sum_ab A_ab g_ab^3`` in the denominator and adds 1e-7 to it;
    both agree when the gradient is constant over positions (GAP + linear heads) and gradients are not tiny.
    """

    name = "gradcampp"

    def weights(self, activations, gradients, logits, class_idx):
        g2 = gradients.pow(2)
        denom = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g2 * gradients
        nonzero = denom != 0
        alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), 0.0)
        return (alpha * F.relu(gradients)).sum(dim=(2, 3), keepdim=True)


class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al., IEEE TIP 2021): position-wise weight ``relu(gradient)``."""

    name = "layercam"

    def weights(self, activations, gradients, logits, class_idx):
        return F.relu(gradients)


CAM_METHODS: dict[str, type[BaseCAM]] = {cls.name: cls for cls in (CAM, GradCAM, GradCAMpp, LayerCAM)}


def canonical_method_name(name: str) -> str:
    """Registry key for a CAM method name (case-insensitive); ValueError listing the methods otherwise."""
    try:
        return look_up_option(str(name).lower(), CAM_METHODS).name
    except ValueError as e:
        raise ValueError(f"unknown CAM method {name!r}: {e}") from None


def build_cam(name: str, model: nn.Module, target_layer: nn.Module | str | None = None) -> BaseCAM:
    """Extractor for method ``name`` ("cam", "gradcam", "gradcampp", "layercam") on ``model``."""
    return CAM_METHODS[canonical_method_name(name)](model, target_layer=target_layer)
