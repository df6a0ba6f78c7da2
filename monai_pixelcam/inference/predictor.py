"""A trained PixelCAM model as a predictor: RGB images in, class probabilities and localization maps out.

The predictor prepares images with the model's input definition, :class:`~monai_pixelcam.transforms.NetworkInput`
rebuilt from ``model_meta.json`` (the transform training and evaluation used): ``float32 3 x H x W`` in [0, 1]
without mean/std normalisation, optionally Macenko stain-normalised at full resolution, then resized to
``image_size x image_size``. One forward pass gives the image logits and the pixel head's logits; the softmax
foreground channel is upsampled bilinearly from feature resolution straight to the image's own size.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.io import image_to_rgb
from ..export import META_FILE, MODEL_FILE, inference_network, read_model_meta
from ..networks.factory import build_pixelcam
from ..networks.pixelcam import foreground_map
from ..networks.weights import load_checkpoint
from ..precision import with_amp, with_channels_last
from ..transforms.array import NetworkInput

__all__ = ["PixelCAMPredictor"]

logger = logging.getLogger(__name__)


def _as_rgb_uint8(image: np.ndarray, index: int) -> np.ndarray:
    """``H x W x 3`` uint8 passes through; grayscale, RGBA (composited on white) and 16-bit/float images are
    converted by the package's one conversion rule (:func:`monai_pixelcam.data.io.image_to_rgb`)."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ValueError(f"image {index}: expected an H x W x 3 RGB array, got shape {arr.shape}")
    try:
        return image_to_rgb(arr, has_alpha=arr.ndim == 3 and arr.shape[-1] in (2, 4))
    except ValueError as e:
        raise ValueError(f"image {index}: expected an H x W x 3 RGB array, got shape {arr.shape} ({e})") from None


class PixelCAMPredictor:
    """Class probabilities and foreground maps of a trained :class:`~monai_pixelcam.networks.PixelCAMNet`.

    Args:
        network: module whose ``forward(x: B x 3 x S x S)`` returns ``{"cls": B x K, "pix": B x 2 x h x w}``
            logits (a :class:`~monai_pixelcam.networks.PixelCAMNet`), or a
            :class:`~monai_pixelcam.networks.PixelCAMLocalizer` (whose ``outputs`` gives them); it is moved to
            ``device`` and put in eval mode.
        classes: the ``K`` class names, in label order.
        threshold: foreground threshold in [0, 1] for the binary mask (a pixel is foreground when its map
            value is ``>= threshold``, as in :class:`~monai_pixelcam.metrics.LocalizationDiceMetric`);
            training stores the one chosen on valpx.
        image_size: side ``S`` the network sees (the training resize, recorded in ``model_meta.json``); every
            image is resized to ``S x S`` for the forward pass and its map is resized back to the image's size.
        device: torch device for the forward pass.
        negative_classes: label indices whose images contain no region of interest (e.g. CAMELYON16
            "normal"); results report whether the predicted class is one of them. The map itself is not
            altered, as in the evaluation protocol.
        stain_normalize: Macenko-normalise each image at full resolution before resizing; must match the
            training setting (``model_meta.json`` records it).
        batch_size: most images per forward pass in :meth:`predict`.
        mpp: microns per pixel of the network input (of an ``image_size`` input) the model was trained at, or
            None when unknown; slide inference reads slides at this scale.
        amp: None (float32), ``"bf16"`` or ``"fp16"``: the forward's autocast dtype
            (:func:`monai_pixelcam.precision.with_amp`); maps and probabilities are float32 either way.
        channels_last: run the network in channels-last memory format
            (:func:`monai_pixelcam.precision.with_channels_last`).
    """

    def __init__(
        self,
        network: nn.Module,
        classes: Sequence[str],
        threshold: float = 0.5,
        image_size: int = 224,
        device: str | torch.device = "cpu",
        negative_classes: Sequence[int] = (),
        stain_normalize: bool = False,
        batch_size: int = 16,
        mpp: float | None = None,
        amp: str | None = None,
        channels_last: bool = False,
    ) -> None:
        classes = [str(c) for c in classes]
        if not classes:
            raise ValueError("classes must name at least one class")
        threshold = float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        if isinstance(image_size, bool) or int(image_size) != image_size or int(image_size) < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if mpp is not None and not (isinstance(mpp, (int, float)) and not isinstance(mpp, bool) and mpp > 0):
            raise ValueError(f"mpp must be a positive number of microns per pixel or None, got {mpp!r}")
        negative = [int(c) for c in negative_classes]
        bad = [c for c in negative if c not in range(len(classes))]
        if bad:
            raise ValueError(f"negative_classes {bad} are not label indices of classes {classes}")
        head = getattr(network, "image_head", None)
        k = getattr(head, "num_classes", None)
        if k is not None and int(k) != len(classes):
            raise ValueError(
                f"the network's image head has {k} outputs but {len(classes)} classes are named: {classes}"
            )
        self.device = torch.device(device)
        self.network = with_amp(with_channels_last(network.to(self.device).eval(), channels_last), amp)
        self.classes = classes
        self.threshold = threshold
        self.image_size = int(image_size)
        self.negative_classes = tuple(negative)
        self.batch_size = int(batch_size)
        self.stain_normalize = bool(stain_normalize)
        self.mpp = None if mpp is None else float(mpp)
        # the training and evaluation chains' input definition, so inputs match what the model was measured on
        self.prepare = NetworkInput(self.image_size, self.stain_normalize)
        self._map_size: int | None = None

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str | os.PathLike,
        device: str | torch.device | None = None,
        network: nn.Module | None = None,
        **kwargs,
    ):
        """Load a trained bundle's model folder: ``model.pt`` (PixelCAMNet state dict) and ``model_meta.json``.

        ``model_meta.json`` holds ``network`` (keyword arguments of
        :func:`~monai_pixelcam.networks.build_pixelcam`), ``classes``, and optionally ``negative_classes``,
        ``threshold`` (default 0.5, with a warning), ``image_size`` (default 224), ``stain_normalize`` and ``mpp``
        (microns per pixel of the network input; None when unknown).
        Weights are read with ``torch.load(weights_only=True)`` and loaded strictly.

        Args:
            device: None picks CUDA when available, else CPU.
            network: the network to load the weights into (e.g. a bundle's ``network_def``); None builds it from
                the meta file's ``network``.
            kwargs: override the meta file's predictor settings (e.g. ``threshold=0.5``, ``batch_size``).

        Raises:
            FileNotFoundError: the folder, ``model.pt`` or ``model_meta.json`` is missing (names the file).
            ValueError: the meta file is not valid JSON or lacks ``network`` / ``classes``, or the weights do
                not fit the network it describes (names the file).
        """
        meta = read_model_meta(model_dir)
        classes = list(meta["classes"])
        net_kwargs = inference_network(meta)
        meta_path = Path(model_dir) / META_FILE
        if network is None:
            try:
                network = build_pixelcam(**net_kwargs)
            except TypeError as e:
                raise ValueError(f"{meta_path}: 'network' does not describe a PixelCAM network ({e})") from None
        load_checkpoint(network, Path(model_dir) / MODEL_FILE)
        if "threshold" not in meta and "threshold" not in kwargs:
            logger.warning("%s has no 'threshold' (the valpx threshold); using 0.5", meta_path)
        settings = {
            "threshold": meta.get("threshold", 0.5),
            **NetworkInput.from_settings(meta).settings(),
            "negative_classes": meta.get("negative_classes", ()),
            "mpp": meta.get("mpp"),
        }
        settings.update(kwargs)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(network, classes, device=device, **settings)

    @property
    def map_size(self) -> int:
        """Side of the pixel head's map for an ``image_size`` input (e.g. 20 for 160 at stride 8); found by one
        forward pass of a blank image, then remembered."""
        if self._map_size is None:
            blank = torch.zeros(1, 3, self.image_size, self.image_size)
            self._map_size = int(self.forward_prepared(blank)[1].shape[-1])
        return self._map_size

    def to(self, device: str | torch.device) -> PixelCAMPredictor:
        """Move the network to ``device`` (e.g. this rank's GPU); returns self."""
        self.device = torch.device(device)
        self.network = self.network.to(self.device)
        return self

    @torch.inference_mode()
    def forward_prepared(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared inputs (:attr:`prepare`) ``B x 3 x S x S`` -> (softmax probabilities ``B x K``, pixel logits
        ``B x 2 x h x w``), both float32 on the predictor's device."""
        out = getattr(self.network, "outputs", self.network)(batch.to(self.device))
        probs = torch.softmax(out["cls"].float(), dim=1)
        if probs.shape[1] != len(self.classes):
            raise ValueError(f"the network returned {probs.shape[1]} class logits for {len(self.classes)} classes")
        return probs, out["pix"].float()

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and maps of a batch of tiles, for sliding-window code.

        Args:
            batch: ``B x 3 x h x w`` float in [0, 1] (any device).

        Returns:
            ``(probs, maps)`` on the CPU: ``probs`` ``B x K`` float32 softmax, ``maps`` ``B x 1 x h x w``
            float32 foreground probability in [0, 1] at the batch's own size.
        """
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"predict_tensor expects a B x 3 x h x w batch, got shape {tuple(batch.shape)}")
        size = [int(batch.shape[-2]), int(batch.shape[-1])]
        x = torch.stack([self.prepare(img.float().cpu()) for img in batch]) if len(batch) else batch
        probs, pix = self.forward_prepared(x)
        return probs.cpu(), foreground_map(pix, size).cpu()

    @torch.inference_mode()
    def predict(self, images: np.ndarray | Sequence[np.ndarray]) -> dict | list[dict]:
        """Predict one image or a list of images (batched forward passes of up to ``batch_size``).

        Args:
            images: ``H x W x 3`` uint8 RGB array, or a list of them (sizes may differ). Grayscale, RGBA and
                16-bit arrays are converted to RGB uint8 first.

        Returns:
            per image a dict: ``"map"`` float32 ``H x W`` in [0, 1] (the image's own size), ``"mask"`` uint8
            ``H x W`` in {0, 1} (``map >= threshold``), ``"probs"`` float64 ``K`` softmax, ``"label"`` int
            argmax, ``"class_name"`` str, ``"negative"`` bool (label in ``negative_classes``). One dict for
            one array, a list for a list.
        """
        single = isinstance(images, np.ndarray)
        arrays = [_as_rgb_uint8(img, i) for i, img in enumerate([images] if single else images)]
        results: list[dict] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            x = torch.stack(
                [self.prepare(torch.tensor(a).permute(2, 0, 1).float().div_(255.0)) for a in chunk]
            )
            probs, pix = self.forward_prepared(x)
            for i, a in enumerate(chunk):
                score = foreground_map(pix[i : i + 1], list(a.shape[:2]))[0, 0].cpu().numpy().astype(np.float32)
                p = probs[i].cpu().double().numpy()
                label = int(np.argmax(p))
                results.append(
                    {
                        "map": score,
                        "mask": (score >= self.threshold).astype(np.uint8),
                        "probs": p,
                        "label": label,
                        "class_name": self.classes[label],
                        "negative": label in self.negative_classes,
                    }
                )
        return results[0] if single else results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classes={self.classes}, threshold={self.threshold}, "
            f"image_size={self.image_size}, device={self.device})"
        )
