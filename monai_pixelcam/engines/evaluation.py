"""Final evaluation by the WSOL protocol: threshold chosen on valpx, applied unchanged to test."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from monai_pixelcam.data.atomic import write_json_atomic
from monai_pixelcam.metrics import PxAP

from .workflows import build_evaluator, roi_transform

__all__ = ["evaluate_localization", "write_json_atomic"]


def evaluate_localization(
    network: torch.nn.Module,
    inferer,
    valpx_loader,
    test_loader,
    class_names: Sequence[str],
    negative_classes: Sequence[int] = (),
    device: str | torch.device = "cpu",
    test_class_names: Sequence[str] | None = None,
    test_negative_classes: Sequence[int] | None = None,
) -> dict:
    """Evaluate one model and one map method on test, Choe et al. (2020) style.

    1. valpx: pool the maps of its images, choose the threshold maximising mIoU (never chosen on test).
    2. test: accuracy on every image; PxAP pooled over the images with a region of interest and per class;
       foreground Dice and mIoU at the valpx threshold and at 0.5.

    Args:
        network: the model (a ``WSOLClassifier`` with a CAM inferer, or a ``PixelCAMNet``).
        inferer: returns ``{"cls": B x K, "map": B x 1 x H x W}``.
        valpx_loader, test_loader: non-shuffled loaders whose items carry masks.
        class_names: names of the model's classes (those of valpx), for per-class keys.
        negative_classes: labels without a region of interest, excluded from localization figures.
        test_class_names, test_negative_classes: the test set's own classes when it comes from another
            dataset (out of distribution, e.g. a GlaS model on CAMELYON patches). When its class names
            differ from ``class_names`` the labels mean other things, so no accuracy is reported and the
            localization figures cover the test images of its classes with a region of interest.

    Returns:
        dict of floats in percent (0..100) except ``threshold`` in [0, 1]: ``accuracy`` (same classes only),
        ``pxap``, ``pxap_<class>``, ``dice``, ``miou`` (at the valpx threshold), ``dice@0.5``, ``miou@0.5``,
        ``valpx_pxap``; plus ``curve`` = ``(precision, recall)`` lists of the pooled test PR curve.
    """
    negative = [int(c) for c in negative_classes]
    # the evaluators' pooled PxAP histogram (PixelHistogram counts on the 0.001 grid) is all the threshold
    # choice and the Dice/mIoU figures need: no second accumulation pass over the same pixels
    valpx = build_evaluator(network, valpx_loader, inferer, "valpx", device=device, negative_classes=negative)
    valpx.run()
    valpx_hist = valpx.pxap_handler.metric_fn
    threshold = float(valpx_hist.histogram_fn.best_threshold(valpx_hist.histogram())["threshold"])

    names = list(class_names if test_class_names is None else test_class_names)
    same_classes = names == list(class_names)
    if test_negative_classes is not None:
        negative = [int(c) for c in test_negative_classes]
    positives = [c for c in range(len(names)) if c not in negative]
    per_class = {
        f"test_pxap_{names[c]}": PxAP(output_transform=roi_transform([o for o in range(len(names)) if o != c]))
        for c in positives
    } if len(positives) > 1 else {}
    test = build_evaluator(
        network, test_loader, inferer, "test", device=device, negative_classes=negative, extra_metrics=per_class
    )
    test.run()
    m = test.state.metrics
    test_hist = test.pxap_handler.metric_fn
    overlap = test_hist.histogram_fn.overlap(test_hist.histogram())
    at_valpx = test_hist.histogram_fn.threshold_index(threshold)
    at_half = test_hist.histogram_fn.threshold_index(0.5)
    result = {
        **({"accuracy": 100 * float(m["test_accuracy"])} if same_classes else {}),
        "pxap": 100 * float(m["test_pxap"]),
        **{k[len("test_"):]: 100 * float(v) for k, v in m.items() if k.startswith("test_pxap_")},
        "dice": 100 * float(overlap["dice"][at_valpx]),
        "miou": 100 * float(overlap["miou"][at_valpx]),
        "dice@0.5": 100 * float(overlap["dice"][at_half]),
        "miou@0.5": 100 * float(overlap["miou"][at_half]),
        "threshold": threshold,
        "valpx_pxap": 100 * float(valpx.state.metrics["valpx_pxap"]),
    }
    precision, recall, _ = test_hist.curve()
    result["curve"] = {"precision": [float(v) for v in precision], "recall": [float(v) for v in recall]}
    return result
