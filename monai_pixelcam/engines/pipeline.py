"""The steps of the PixelCAM pipeline that sit between engines: CAM storing and the evaluation report.

The bundle's ``train_source`` and ``train_pixelcam`` steps are trainers the bundle configs declare; the steps
here are plain functions of already-built networks and loaders, so the bundle configs only wire them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from monai.data import MetaTensor

from monai_pixelcam.cams import CAMStore, prepare_seed_maps
from monai_pixelcam.cams.auto import DEFAULT_CANDIDATES
from monai_pixelcam.visualize import save_map_grid, save_pr_curves
from monai_pixelcam.networks.weights import load_checkpoint

from monai_pixelcam.atomic import write_json_atomic
from monai_pixelcam.handlers.selection import read_selection

from .evaluation import evaluate_localization
from .inferers import CAMInferer, PixelCAMInferer

__all__ = ["SELECTIONS", "store_cams", "evaluate_pipeline", "evaluate_external"]

logger = logging.getLogger(__name__)

#: checkpoint selections: B-LOC (best valpx PxAP) and B-CL (best valcl accuracy)
SELECTIONS = ("bloc", "bcl")


def store_cams(
    network: torch.nn.Module, checkpoint: str | os.PathLike, loader, store_dir: str | os.PathLike, method: str,
    device: str | torch.device = "cpu",
    distinct_kwargs: dict | None = None,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
    selection_loader=None,
) -> CAMStore:
    """Load the source ``checkpoint`` into ``network`` and store the true-class CAM of every image of
    ``loader`` (deterministic eval transforms) under ``store_dir``; the manifest records the checkpoint's
    sha256 and ``method`` so that a later stage cannot read stale maps. ``distinct_kwargs``, ``candidates`` and
    ``selection_loader`` (valpx, for ``method="auto"``): see :func:`~monai_pixelcam.cams.prepare_seed_maps`."""
    load_checkpoint(network, checkpoint)
    maps = prepare_seed_maps(
        method, network, loader, device=device, distinct_kwargs=distinct_kwargs, candidates=candidates,
        selection_loader=selection_loader,
    )
    store = CAMStore(store_dir).build(maps, loader, checkpoint)
    if "selection" in store.manifest:
        logger.info(f"seed maps per class, chosen on valpx: {store.manifest['selection']}")
    logger.info(f"stored {len(store)} {method} maps of {checkpoint} in {store_dir}")
    return store


def _plain(x) -> torch.Tensor:
    # MetaTensor cannot index its per-item metadata with an empty selection; the figures need no metadata
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


def _first_roi_batch(loader, negative_classes: Sequence[int], n: int) -> dict:
    """The first ``n`` items of ``loader`` whose class has a region of interest, as one batch."""
    parts: dict[str, list] = {"image": [], "mask": [], "label": []}
    for batch in loader:
        label = _plain(batch["label"]).reshape(-1)
        keep = ~torch.isin(label, torch.as_tensor(list(negative_classes), dtype=label.dtype))
        parts["label"].append(label[keep])
        for key in ("image", "mask"):
            parts[key].append(_plain(batch[key])[keep])
        if sum(len(x) for x in parts["image"]) >= n:
            break
    return {key: torch.cat(value)[:n] for key, value in parts.items()}


def evaluate_pipeline(
    source_network: torch.nn.Module,
    pixelcam_network: torch.nn.Module,
    checkpoint_dir: str | os.PathLike,
    valpx_loader,
    test_loader,
    class_names: Sequence[str],
    negative_classes: Sequence[int] = (),
    cam_methods: Sequence[str] = ("cam", "gradcam", "gradcampp", "layercam"),
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    n_figure_images: int = 6,
    tag: str = "test",
    test_class_names: Sequence[str] | None = None,
    test_negative_classes: Sequence[int] | None = None,
) -> dict:
    """Evaluate the source model (every CAM method) and PixelCAM, B-LOC and B-CL checkpoints, on test.

    Reads ``source_{bloc,bcl}.pt`` and ``pixelcam_{bloc,bcl}.pt`` from ``checkpoint_dir``; the threshold of
    every model and method is chosen on ``valpx_loader`` (the in-distribution valpx also for an
    out-of-distribution ``test_loader``). Writes into ``output_dir`` (default ``checkpoint_dir``):
    ``metrics.json`` (``{"source": {method: {selection: figures}}, "pixelcam": {selection: figures},
    "bloc_selection": {stage: record}}``, figures as :func:`evaluate_localization` returns them, without
    curves; the records of :class:`~monai_pixelcam.handlers.BLOCSelector`, or None where there is none), ``figures/pr_curves.png``
    (B-LOC models) and ``figures/maps.png`` (image+mask | source CAMs | PixelCAM for test images with a
    region of interest).

    ``test_class_names`` / ``test_negative_classes`` describe a test set from another dataset (see
    :func:`~monai_pixelcam.engines.evaluation.evaluate_localization`); when its classes differ from the
    model's, the CAM methods explain the predicted class, since the test labels name other classes.

    Returns:
        the ``metrics.json`` dict.
    """
    checkpoint_dir = Path(checkpoint_dir)
    output_dir = Path(output_dir) if output_dir is not None else checkpoint_dir
    negative = [int(c) for c in negative_classes]
    test_names = list(class_names if test_class_names is None else test_class_names)
    test_negative = negative if test_negative_classes is None else [int(c) for c in test_negative_classes]
    same_classes = test_names == list(class_names)
    results: dict = {"split": tag, "classes": test_names, "source": {}, "pixelcam": {}}
    curves: dict = {}
    figure_batch = _first_roi_batch(test_loader, test_negative, n_figure_images)
    figure_maps: dict = {}
    runs = [("source", m, CAMInferer(m, use_labels=same_classes), source_network) for m in cam_methods]
    runs.append(("pixelcam", None, PixelCAMInferer(), pixelcam_network))
    for stage, method, inferer, network in runs:
        for selection in SELECTIONS:
            ckpt = checkpoint_dir / f"{stage}_{selection}.pt"
            if not ckpt.exists():
                raise FileNotFoundError(f"evaluate: no checkpoint {ckpt}; run the training steps first")
            load_checkpoint(network, ckpt)
            network.to(device)
            figures = evaluate_localization(
                network, inferer, valpx_loader, test_loader, class_names, negative, device, test_names, test_negative
            )
            curve = figures.pop("curve")
            name = "PixelCAM" if method is None else f"source {method}"
            entry = results["pixelcam"] if method is None else results["source"].setdefault(method, {})
            entry[selection] = figures
            shown = ", ".join(f"{k}={'absent' if v is None else f'{v:.3g}'}" for k, v in figures.items())
            logger.info(f"{tag} {name} {selection}: {shown}")
            if selection == "bloc":
                curves[name] = (curve["precision"], curve["recall"], figures["pxap"] / 100)
                if len(figure_batch["image"]):
                    with torch.no_grad():
                        maps = inferer(
                            figure_batch["image"].to(device), network, labels=figure_batch["label"].to(device)
                        )["map"]
                    figure_maps[name] = maps.cpu()
    # how each B-LOC checkpoint was chosen (BLOCSelector): its epoch and accuracy, the run's best, every validation
    results["bloc_selection"] = {
        stage: read_selection(checkpoint_dir / f"{stage}_bloc_selection.json") for stage in ("source", "pixelcam")
    }
    if idist.get_rank() == 0:  # every rank has the same figures (the metrics reduce over their shards)
        write_json_atomic(results, output_dir / "metrics.json")
        save_pr_curves(output_dir / "figures" / "pr_curves.png", curves, title=f"{tag}: pixel precision-recall (B-LOC)")
        if figure_maps:
            save_map_grid(output_dir / "figures" / "maps.png", figure_batch["image"], figure_batch["mask"], figure_maps)
    return results


def evaluate_external(
    source_network: torch.nn.Module,
    pixelcam_network: torch.nn.Module,
    checkpoint_dir: str | os.PathLike,
    valpx_loader,
    class_names: Sequence[str],
    negative_classes: Sequence[int],
    dataset: str | None,
    dataset_dir: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    network_input=None,
    batch_size: int = 16,
    cam_methods: Sequence[str] = ("cam", "gradcam", "gradcampp", "layercam"),
    output_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict | None:
    """:func:`evaluate_pipeline` on the test split of another labelled set, without adaptation: a user's own
    annotated tiles, another dataset (out of distribution, e.g. a GlaS model on CAMELYON16 patches) or the same
    task re-rendered (e.g. shifted stain).

    The set is given like the training data (``dataset`` name and ``dataset_dir``, or a ``datalist`` JSON) and
    prepared by :func:`monai_pixelcam.data.prepare_datalist`; it needs a ``test`` split only. The threshold of
    each model is chosen on the set's own ``valpx`` when it brings one that shares no image with its test
    split, else on the training dataset's ``valpx_loader`` (a valpx overlapping test would choose the threshold
    on test images, which the protocol forbids; a warning says so). The images get the model's input
    definition, ``network_input`` (the bundle's :class:`~monai_pixelcam.transforms.NetworkInputd`; None: a
    224 px input without stain normalisation). Returns None, doing nothing, when neither ``dataset`` nor
    ``datalist`` is set, so that a bundle can always list this step.
    """
    from monai_pixelcam.data import load_datalist, prepare_datalist
    from monai_pixelcam.transforms import eval_transforms

    from .builders import build_dataloader

    if not dataset and not datalist:
        return None
    path = prepare_datalist(
        dataset or "synthetic_glas", dataset_dir or f"data/{dataset}", datalist, seed=seed, splits=("test",)
    )
    external = load_datalist(path, splits=("test",))
    settings = network_input.settings() if network_input is not None else {}
    chain = eval_transforms(**settings)
    name = Path(datalist).stem if datalist else str(dataset)
    if external["valpx"]:
        shared = {it["id"] for it in external["valpx"]} & {it["id"] for it in external["test"]}
        if shared:
            logger.warning(
                f"{path}: {len(shared)} valpx image(s) are also test images (e.g. {sorted(shared)[0]!r}); the "
                "thresholds are chosen on the bundle's own valpx instead"
            )
        elif list(external["classes"]) != list(class_names):
            logger.warning(f"{path}: its classes {external['classes']} are not the model's; its valpx is not used")
        else:
            logger.info(f"{name}: thresholds chosen on its own valpx ({len(external['valpx'])} images)")
            valpx_loader = build_dataloader(external["valpx"], chain, batch_size=batch_size)
    loader = build_dataloader(external["test"], chain, batch_size=batch_size)
    return evaluate_pipeline(
        source_network, pixelcam_network, checkpoint_dir, valpx_loader, loader, class_names, negative_classes,
        cam_methods, output_dir, device, tag=name, test_class_names=external["classes"],
        test_negative_classes=external["negative_classes"],
    )
