"""Localization maps for every image in a folder: heatmap and mask PNGs (NIfTI on request) and one CSV.

One bad file never stops a run: unreadable images are reported with their error and skipped, files that
are not images are listed as skipped, and everything else is processed. Whole-slide images (pyramidal or
very large TIFFs, SVS) go through the sliding-window path of :mod:`monai_pixelcam.inference.wsi`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..data.atomic import write_csv_atomic, write_nifti_atomic, write_png_atomic
from ..data.datalist import DatalistError
from ..data.io import read_rgb
from ..visualize import heatmap_rgb
from .predictor import PixelCAMPredictor
from .wsi import DEFAULT_MAX_TILE_PIXELS, SLIDE_SUFFIXES, is_whole_slide, localize_slide

__all__ = [
    "IMAGE_SUFFIXES",
    "localize_folder",
    "localize_image",
]

logger = logging.getLogger(__name__)

#: Image files a folder run processes (compared case-insensitively); ``.svs`` slides are added by the WSI code.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def localize_image(
    image: np.ndarray, predictor: PixelCAMPredictor, output_dir: str | os.PathLike, stem: str, save_nifti: bool = False
) -> dict:
    """Predict one ``H x W x 3`` uint8 image and write ``<stem>_heatmap.png`` (RGB colour map),
    ``<stem>_mask.png`` (0/255 at ``predictor.threshold``, same ``H x W``) and, when asked,
    ``<stem>_map.nii.gz``. Returns the prediction (see :meth:`PixelCAMPredictor.predict`) plus ``"paths"``."""
    output_dir = Path(output_dir)
    pred = predictor.predict(image)
    paths = {
        "heatmap": write_png_atomic(output_dir / f"{stem}_heatmap.png", heatmap_rgb(pred["map"])),
        "mask": write_png_atomic(output_dir / f"{stem}_mask.png", pred["mask"] * 255),
    }
    if save_nifti:
        paths["map"] = write_nifti_atomic(output_dir / f"{stem}_map.nii.gz", pred["map"])
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

    Every PNG / JPEG / TIFF / BMP file (suffix case-insensitive) is predicted and gets
    ``<stem>_heatmap.png`` (RGB colour map of the foreground probability), ``<stem>_mask.png`` (0/255, the
    image's ``H x W``, ``map >= predictor.threshold``) and, with ``save_nifti``, ``<stem>_map.nii.gz``
    (:func:`~monai_pixelcam.data.atomic.write_nifti_atomic`). Whole-slide images (:func:`~monai_pixelcam.inference.wsi.is_whole_slide`:
    multi-level TIFF, TIFF over ``max_tile_pixels`` pixels, SVS) go to
    :func:`~monai_pixelcam.inference.wsi.localize_slide` (``slide_kwargs`` are passed on), which adds
    ``<stem>_tissue.png`` and ``<stem>_tiles.csv``. Outputs of ``sub/a.png`` (``recursive``) go to
    ``output_dir/sub/``; inputs sharing a stem (``a.png``, ``a.jpg``) keep their suffix in the prefix.

    At the end, written atomically:

    - ``predictions.csv``: one row per processed file: ``image`` (path relative to ``input_dir``),
      ``kind`` (``image`` or ``slide``), ``class`` (predicted), ``prob_<class>`` for each class (slides:
      mean over the predicted tiles; empty when a slide shows no tissue), ``threshold``,
      ``foreground_fraction`` (share of the analysed pixels in the mask: the whole image, or the pixels
      of a slide covered by predicted tiles);
    - ``errors.csv``: ``image``, ``status`` (``failed``: unreadable or corrupt image, with the error;
      ``skipped``: not an image file), ``message``; header only when there are none.

    Args:
        input_dir: folder of images (or a single image / slide file).
        output_dir: folder for the outputs (created); must differ from ``input_dir``.
        predictor: a :class:`PixelCAMPredictor`, or a trained model folder to load one from
            (:meth:`PixelCAMPredictor.from_model_dir`).
        save_nifti: also write the float maps as NIfTI.
        recursive: include sub-folders (``output_dir`` is left out when it lies inside).
        max_tile_pixels: TIFFs with more pixels are treated as slides; default
            :data:`~monai_pixelcam.inference.wsi.DEFAULT_MAX_TILE_PIXELS` (4096 x 4096).
        slide_kwargs: keyword arguments of :func:`~monai_pixelcam.inference.wsi.localize_slide` (``level``,
            ``tile_size``, ``overlap``, ``heatmap_level``, ``tissue_threshold``, ``batch_size``, ``backend``).

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
    logger.info("%d image(s) to process in %s, %d other file(s) skipped", len(images), input_dir, len(skipped))

    processed: list[str] = []
    failed: dict[str, str] = {}
    results: dict[str, dict] = {}
    threshold = f"{predictor.threshold:.6g}"
    for n, f in enumerate(images, start=1):
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
            logger.warning("[%d/%d] %s", n, len(images), failed[name], exc_info=not expected)
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
        processed.append(name)
        logger.info("[%d/%d] %s: %s", n, len(images), name, res["class_name"])

    header = ["image", "kind", "class", *[f"prob_{c}" for c in predictor.classes], "threshold", "foreground_fraction"]
    predictions = write_csv_atomic(
        output_dir / "predictions.csv", header, [[results[p][h] for h in header] for p in processed]
    )
    errors = write_csv_atomic(
        output_dir / "errors.csv",
        ["image", "status", "message"],
        [[k, "failed", v] for k, v in failed.items()] + [[s, "skipped", "not an image file"] for s in skipped],
    )
    logger.info(
        "%d processed, %d failed, %d skipped; %s", len(processed), len(failed), len(skipped), predictions
    )
    return {
        "processed": processed,
        "failed": failed,
        "skipped": skipped,
        "predictions": predictions,
        "errors": errors,
        "results": results,
    }
