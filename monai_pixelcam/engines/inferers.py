"""MONAI inferers that return image logits and a localization map in one call.

Every inferer here returns ``{"cls": B x K logits, "map": B x 1 x H x W in [0, 1]}`` at the input's size, so
one evaluator, one set of metrics and one inference path serve the source CAM methods and PixelCAM.
"""

from __future__ import annotations

import torch
from monai.inferers import Inferer

from monai_pixelcam.cams import build_cam
from monai_pixelcam.networks.pixelcam import foreground_map

__all__ = ["ClassifierInferer", "CAMInferer", "PixelCAMInferer"]


class ClassifierInferer(Inferer):
    """Plain forward of a classifier returning ``{"cls": B x K}`` (no map): for image-label validation."""

    def __call__(self, inputs: torch.Tensor, network, *args, labels=None, **kwargs) -> dict:
        out = network(inputs)
        return {"cls": out["cls"] if isinstance(out, dict) else out}


class PixelCAMInferer(Inferer):
    """PixelCAM localization: one forward pass, the pixel head's softmax foreground channel upsampled
    bilinearly to the input size. No backward pass and no class index are needed."""

    def __call__(self, inputs: torch.Tensor, network, *args, labels=None, **kwargs) -> dict:
        out = network(inputs)
        return {"cls": out["cls"], "map": foreground_map(out["pix"], list(inputs.shape[-2:]))}


class CAMInferer(Inferer):
    """Class activation map of a ``WSOLClassifier`` by one of the methods of :mod:`monai_pixelcam.cams`.

    Args:
        method: ``"cam"``, ``"gradcam"``, ``"gradcampp"`` or ``"layercam"``.
        target_layer: layer to explain; default the classifier's encoder output.
        use_labels: explain the true class when labels are passed (the WSOL evaluation protocol),
            otherwise the predicted class.

    Gradient-based methods need autograd, which MONAI evaluators switch off; the extractor re-enables it
    locally and takes gradients with respect to activations only, so no parameter ``.grad`` is touched.
    The map is upsampled to the input before min-max normalisation, as the WSOL protocol scores it.
    """

    def __init__(self, method: str = "cam", target_layer=None, use_labels: bool = True) -> None:
        self.method = method
        self.target_layer = target_layer
        self.use_labels = use_labels

    def __call__(self, inputs: torch.Tensor, network, *args, labels=None, **kwargs) -> dict:
        extractor = build_cam(self.method, network, self.target_layer)
        maps, logits = extractor.extract(inputs, labels=labels if self.use_labels else None, upsample=True)
        return {"cls": logits, "map": maps}
