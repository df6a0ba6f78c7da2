"""Localization maps for every image in a folder: heat map, mask, overlay and GeoJSON per image (NIfTI on
request) and one CSV.

One bad file never stops a run: unreadable images are reported with their error and skipped, files that
are not images are listed as skipped, and everything else is processed. Whole-slide images (vendor formats,
pyramidal or very large TIFFs) go through :func:`~monai_pixelcam.inference.slide.localize_slide`.

Under ``torchrun`` the images are sharded across the ranks (``ignite.distributed``): each rank writes its own
images' outputs, and rank 0 gathers every rank's rows and writes ``predictions.csv`` and ``errors.csv``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch.distributed as dist

from ..data.atomic import write_csv_atomic
from ..data.datalist import DatalistError
from ..data.io import read_rgb
from .outputs import write_localization
from .predictor import PixelCAMPredictor
from .slide import localize_slide
from .wsi import DEFAULT_MAX_TILE_PIXELS, SLIDE_SUFFIXES, is_whole_slide

__all__ = [
    "IMAGE_SUFFIXES",
    "localize_folder",
    "localize_image",
]

logger = logging.getLogger(__name__)

#: Image files a folder run processes (compared case-insensitively); slide suffixes come from the WSI code.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def localize_image(
    image: np.ndarray, predictor: PixelCAMPredictor, output_dir: str | os.PathLike, stem: str, save_nifti: bool = False
) -> dict:
    """Predict one ``H x W x 3`` uint8 image and write its outputs
    (:func:`~monai_pixelcam.inference.outputs.write_localization`): ``<stem>_heatmap.png`` (RGB colour map),
    ``<stem>_mask.png`` (0/255 at ``predictor.threshold``, same ``H x W``), ``<stem>_overlay.png``,
    ``<stem>_regions.geojson`` (polygons in the image's pixels) and, when asked, ``<stem>_map.nii.gz``.
    Returns the prediction (see :meth:`PixelCAMPredictor.predict`) plus ``"paths"``."""
    pred = predictor.predict(image)
    paths = write_localization(
        output_dir, stem, pred["map"], predictor.threshold, predictor.classes, pred["probs"], image,
        save_nifti=save_nifti,
    )
    return {**pred, "paths": paths}


def _list_files(input_dir: Path, output_dir: Path, recursive: bool) -> list[Path]:
    """Files under ``input_dir`` (sorted), leaving out ``output_dir`` when it lies inside."""
    candidates = input_dir.rglob("*") if recursive else input_dir.iterdir()
    out_resolved = output_dir.resolve()
    files = []
    for p in candidates:
        if not p.is_file():
            continue
        if recursive and out_resolved in p.resolve().parents:
            continue
        files.append(p)
    return sorted(files)


def _output_stems(rel_paths: Sequence[str]) -> dict[str, str]:
    """Output prefix of each input: its relative path without suffix, or with the suffix folded into the
    name (``a.png`` -> ``a_png``) when two inputs would share a prefix (``a.png`` and ``a.jpg``)."""
    plain = {r: str(Path(r).with_suffix("")) for r in rel_paths}
    counts: dict[str, int] = {}
    for s in plain.values():
        counts[s] = counts.get(s, 0) + 1
    return {r: s if counts[s] == 1 else f"{s}_{Path(r).suffix.lstrip('.').lower()}" for r, s in plain.items()}


def _describe(rel: str, e: BaseException) -> str:
    msg = str(e).strip() or "no details"
    if isinstance(e, DatalistError) and (rel in msg or str(Path(rel).name) in msg):
        return msg  # the image reader's message already names the file
    return f"{rel}: {type(e).__name__}: {msg}"


def _join_launched_group() -> bool:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1) with no process group yet, start a gloo one: the ranks only gather
    CSV rows, which gloo does on any device. Returns whether this call started it (and so must end it)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        idist.sync()  # a group someone else started (or none): let Ignite see it
        return False
    idist.initialize("gloo")
    return True


def localize_folder(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    predictor: PixelCAMPredictor | str | os.PathLike,
    save_nifti: bool = False,
    recursive: bool = False,
    max_tile_pixels: int | None = None,
    slide_kwargs: Mapping | None = None,
) -> dict:
    """Localization maps and class probabilities for every image in ``input_dir``.

    Every PNG / JPEG / TIFF / BMP file (suffix case-insensitive) is predicted and gets (:func:`localize_image`)
    ``<stem>_heatmap.png`` (RGB colour map of the foreground probability), ``<stem>_mask.png`` (0/255, the
    image's ``H x W``, ``map >= predictor.threshold``), ``<stem>_overlay.png``, ``<stem>_regions.geojson`` and,
    with ``save_nifti``, ``<stem>_map.nii.gz``. Whole-slide images
    (:func:`~monai_pixelcam.inference.wsi.is_whole_slide`: vendor suffixes, multi-level TIFF, TIFF over
    ``max_tile_pixels`` pixels) go to :func:`~monai_pixelcam.inference.slide.localize_slide` (``slide_kwargs``
    are passed on), whose outputs are at most ``max_heatmap_pixels`` and add ``<stem>_tissue.png`` and
    ``<stem>_tiles.csv``. Outputs of ``sub/a.png`` (``recursive``) go to ``output_dir/sub/``; inputs sharing
    a stem (``a.png``, ``a.jpg``) keep their suffix in the prefix.

    Under ``torchrun`` (a process group, or ``WORLD_SIZE`` > 1: a gloo group is started and ended here), rank
    ``r`` of ``n`` processes images ``r, r + n, ...`` of the sorted list and writes their outputs; on a GPU it
    moves the network to ``cuda:LOCAL_RANK``. Rank 0 gathers every rank's rows and writes the two CSVs; every
    rank returns the merged report.

    At the end, written atomically:

    - ``predictions.csv``: one row per processed file: ``image`` (path relative to ``input_dir``),
      ``kind`` (``image`` or ``slide``), ``class`` (predicted), ``prob_<class>`` for each class (slides:
      mean over the predicted windows; empty when a slide shows no tissue), ``threshold``,
      ``foreground_fraction`` (share of the analysed pixels in the mask: the whole image, or the pixels of a
      slide under predicted windows);
    - ``errors.csv``: ``image``, ``status`` (``failed``: unreadable, corrupt or unsupported file, with the
      error; ``skipped``: not an image file), ``message``; header only when there are none.

    Args:
        input_dir: folder of images (or a single image / slide file).
        output_dir: folder for the outputs (created); must differ from ``input_dir``.
        predictor: a :class:`PixelCAMPredictor`, or a trained model folder to load one from
            (:meth:`PixelCAMPredictor.from_model_dir`).
        save_nifti: also write the float maps as NIfTI.
        recursive: include sub-folders (``output_dir`` is left out when it lies inside).
        max_tile_pixels: TIFFs with more pixels are treated as slides; default
            :data:`~monai_pixelcam.inference.wsi.DEFAULT_MAX_TILE_PIXELS` (4096 x 4096).
        slide_kwargs: keyword arguments of :func:`~monai_pixelcam.inference.slide.localize_slide` (``mpp``,
            ``overlap``, ``max_heatmap_pixels``, ``tissue_threshold``, ``batch_size``, ``num_workers``,
            ``backend``, ...).

    Returns:
        ``{"processed": [relative paths], "failed": {relative path: message}, "skipped": [relative paths],
        "predictions": Path, "errors": Path, "results": {relative path: row dict of predictions.csv}}``.

    Raises:
        FileNotFoundError: ``input_dir`` does not exist.
        ValueError: ``output_dir`` is ``input_dir``.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.exists():
        raise FileNotFoundError(f"input not found: {input_dir}")
    if input_dir.is_dir() and input_dir.resolve() == output_dir.resolve():
        raise ValueError(f"output_dir must differ from input_dir ({input_dir}): outputs would be read as inputs")
    if not isinstance(predictor, PixelCAMPredictor):
        predictor = PixelCAMPredictor.from_model_dir(predictor)
    max_tile_pixels = DEFAULT_MAX_TILE_PIXELS if max_tile_pixels is None else int(max_tile_pixels)
    slide_kwargs = dict(slide_kwargs or {})
    output_dir.mkdir(parents=True, exist_ok=True)

    if input_dir.is_file():
        root, files = input_dir.parent, [input_dir]
    else:
        root, files = input_dir, _list_files(input_dir, output_dir, recursive)
    rel = {f: f.relative_to(root).as_posix() for f in files}
    accepted = set(IMAGE_SUFFIXES) | set(SLIDE_SUFFIXES)
    images = [f for f in files if f.suffix.lower() in accepted]
    skipped = [rel[f] for f in files if f.suffix.lower() not in accepted]
    stems = _output_stems([rel[f] for f in images])

    started_group = _join_launched_group()
    rank, world = idist.get_rank(), idist.get_world_size()
    if world > 1 and predictor.device.type == "cuda":
        predictor.to(f"cuda:{idist.get_local_rank()}")
    mine = images[rank::world]
    logger.info(
        "rank %d/%d: %d of %d image(s) to process in %s, %d other file(s) skipped",
        rank, world, len(mine), len(images), input_dir, len(skipped),
    )

    failed: dict[str, str] = {}
    results: dict[str, dict] = {}
    threshold = f"{predictor.threshold:.6g}"
    for n, f in enumerate(mine, start=1):
        name, stem = rel[f], stems[rel[f]]
        out = output_dir / Path(stem).parent
        try:
            if is_whole_slide(f, max_tile_pixels):
                res = localize_slide(f, predictor, out, stem=Path(stem).name, save_nifti=save_nifti, **slide_kwargs)
                kind = "slide"
            else:
                res = localize_image(read_rgb(f), predictor, out, Path(stem).name, save_nifti=save_nifti)
                res["foreground_fraction"] = float(res["mask"].mean())
                kind = "image"
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the run; it is reported
            failed[name] = _describe(name, e)
            expected = isinstance(e, (DatalistError, ValueError, OSError))
            logger.warning("rank %d: [%d/%d] %s", rank, n, len(mine), failed[name], exc_info=not expected)
            continue
        probs = res["probs"]
        results[name] = {
            "image": name,
            "kind": kind,
            "class": res["class_name"] or "",
            **{f"prob_{c}": ("" if probs is None else f"{probs[k]:.6f}") for k, c in enumerate(predictor.classes)},
            "threshold": threshold,
            "foreground_fraction": f"{res['foreground_fraction']:.6f}",
        }
        logger.info("rank %d: [%d/%d] %s: %s", rank, n, len(mine), name, res["class_name"])

    if world > 1:
        for part in idist.all_gather({"results": results, "failed": failed}):
            results.update(part["results"])
            failed.update(part["failed"])
    order = {rel[f]: k for k, f in enumerate(images)}
    processed = sorted(results, key=order.get)
    failed = {k: failed[k] for k in sorted(failed, key=order.get)}
    header = ["image", "kind", "class", *[f"prob_{c}" for c in predictor.classes], "threshold", "foreground_fraction"]
    predictions, errors = output_dir / "predictions.csv", output_dir / "errors.csv"
    if rank == 0:
        write_csv_atomic(predictions, header, [[results[p][h] for h in header] for p in processed])
        write_csv_atomic(
            errors,
            ["image", "status", "message"],
            [[k, "failed", v] for k, v in failed.items()] + [[s, "skipped", "not an image file"] for s in skipped],
        )
        logger.info("%d processed, %d failed, %d skipped; %s", len(processed), len(failed), len(skipped), predictions)
    if world > 1:
        idist.barrier()  # rank 0 has written the CSVs when any rank returns
    if started_group:
        idist.finalize()
    return {
        "processed": processed,
        "failed": failed,
        "skipped": skipped,
        "predictions": predictions,
        "errors": errors,
        "results": results,
    }
