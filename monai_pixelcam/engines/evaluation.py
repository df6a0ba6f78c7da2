"""Final evaluation by the WSOL protocol: threshold chosen on valpx, applied unchanged to test.

Every figure comes from a metric handler of :mod:`monai_pixelcam.metrics` attached to a MONAI
``SupervisedEvaluator``: ``ThresholdSelection`` on valpx, ``PxAP`` (pooled and per class) and ``LocalizationDice``
(at the valpx threshold and at 0.5) on test, Ignite's ``Accuracy``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from ignite.metrics import Accuracy
from monai.engines import SupervisedEvaluator

from monai_pixelcam.metrics import LocalizationDice, PxAP, ThresholdSelection, from_engine_roi

from .prepare_batch import DictTargetPrepareBatch

__all__ = [
    "evaluate_localization",
    "localization_evaluator",
    "roi_transform",
    "accuracy_transform",
    "maps_for_tensorboard",
]


def roi_transform(excluded_labels: Sequence[int] = ()):
    """Output transform ``(maps, masks)`` of an evaluator built by :func:`localization_evaluator` (or the
    bundle's), leaving out the images whose label is in ``excluded_labels`` (classes without a region of
    interest, or all classes but one for a per-class figure)."""
    return from_engine_roi(("pred", "map"), ("label", "mask"), None, ("label", "label"), list(excluded_labels))


def accuracy_transform():
    """Output transform ``(logits B x K, labels B)`` for ``ignite.metrics.Accuracy`` on such an evaluator."""
    return from_engine_roi(("pred", "cls"), ("label", "label"), None)


def localization_evaluator(
    network: torch.nn.Module,
    data_loader,
    inferer,
    name: str,
    device: str | torch.device = "cpu",
    negative_classes: Sequence[int] = (),
    additional_metrics: dict | None = None,
    with_accuracy: bool = True,
    pxap: PxAP | None = None,
) -> SupervisedEvaluator:
    """A ``SupervisedEvaluator`` over items with masks whose key metric is ``<name>_pxap`` (images of
    ``negative_classes`` left out; or the given ``pxap`` handler, whose metric then keeps the pooled
    histogram for a PR curve) and which reports ``<name>_accuracy`` and ``additional_metrics``."""
    pxap = pxap if pxap is not None else PxAP(output_transform=roi_transform(negative_classes))
    accuracy = {f"{name}_accuracy": Accuracy(output_transform=accuracy_transform())} if with_accuracy else {}
    return SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network,
        inferer=inferer,
        prepare_batch=DictTargetPrepareBatch(("label", "mask"), labels_to_inferer=True),
        key_val_metric={f"{name}_pxap": pxap},
        additional_metrics={**accuracy, **(additional_metrics or {})},
        decollate=False,
    )


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
        ``pxap``, ``pxap_<class>`` (None for a class without test images), ``dice``, ``miou`` (at the valpx
        threshold), ``dice@0.5``, ``miou@0.5``,
        ``valpx_pxap``; plus ``curve`` = ``(precision, recall)`` lists of
        the pooled test PR curve.
    """
    negative = [int(c) for c in negative_classes]
    valpx = localization_evaluator(
        network, valpx_loader, inferer, "valpx", device, negative,
        {"valpx_threshold": ThresholdSelection(output_key="threshold", output_transform=roi_transform(negative))},
        with_accuracy=False,
    )
    valpx.run()
    threshold = float(valpx.state.metrics["valpx_threshold"])

    names = list(class_names if test_class_names is None else test_class_names)
    same_classes = names == list(class_names)
    if test_negative_classes is not None:
        negative = [int(c) for c in test_negative_classes]
    positives = [c for c in range(len(names)) if c not in negative]
    # a class without test images has no per-class figure: reported as absent (None), not computed on nothing
    present = _labels_present(test_loader)
    metrics: dict = {
        f"test_pxap_{names[c]}": PxAP(output_transform=roi_transform([o for o in range(len(names)) if o != c]))
        for c in positives
        if present is None or c in present
    } if len(positives) > 1 else {}
    for tag, t in (("at_valpx", threshold), ("at_half", 0.5)):
        metrics[f"test_{tag}"] = LocalizationDice(threshold=t, output_transform=roi_transform(negative))
    pxap = PxAP(output_transform=roi_transform(negative))
    test = localization_evaluator(
        network, test_loader, inferer, "test", device, negative, metrics, with_accuracy=same_classes, pxap=pxap
    )
    test.run()
    m = test.state.metrics
    result = {
        **({"accuracy": 100 * float(m["test_accuracy"])} if same_classes else {}),
        "pxap": 100 * float(m["test_pxap"]),
        **({f"pxap_{names[c]}": None for c in positives} if len(positives) > 1 else {}),
        **{k[len("test_"):]: 100 * float(v) for k, v in m.items() if k.startswith("test_pxap_")},
        "dice": 100 * float(m["test_at_valpx_dice"]),
        "miou": 100 * float(m["test_at_valpx_miou"]),
        "dice@0.5": 100 * float(m["test_at_half_dice"]),
        "miou@0.5": 100 * float(m["test_at_half_miou"]),
        "threshold": float(threshold),
        "valpx_pxap": 100 * float(valpx.state.metrics["valpx_pxap"]),
    }
    precision, recall, _ = pxap.metric_fn.curve()
    result["curve"] = {"precision": [float(v) for v in precision], "recall": [float(v) for v in recall]}
    return result


def _labels_present(loader) -> set[int] | None:
    """Class labels of a loader's dataset items (a MONAI ``Dataset`` over datalist items, or a list of items),
    or None when they cannot be read without loading the images."""
    dataset = getattr(loader, "dataset", None)
    data = getattr(dataset, "data", dataset)
    try:
        return {int(it["label"]) for it in data}
    except (TypeError, KeyError, ValueError):
        return None


def maps_for_tensorboard(output: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output transform of ``TensorBoardMapHandler`` on a localization evaluator: ``(images B x 3 x H x W,
    masks B x 1 x H x W, maps B x 1 x H x W)``."""
    return output["image"], output["label"]["mask"], output["pred"]["map"]
