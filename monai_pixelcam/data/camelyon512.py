"""CAMELYON512 rebuilt from raw CAMELYON16: the patches and masks a published fold lists, cut from the slides and
rasterized from their lesion XML, then the fold's datalist (:mod:`monai_pixelcam.data.folds`).

A CAMELYON512 patch's name encodes its source and cut, e.g. ``Patch_file_training-tumor-tumor_057.tif_reg_0_``
``row_0_patch_0_x_13692_y_156099_tissue_0.3262_metastatic_0.2003_w_512_h_512.png``: the slide (``tumor_057``),
the level-0 top-left ``x``, ``y``, the size ``w`` x ``h`` and the tissue and metastatic fractions. Its mask has the
parallel name the fold's ``localization.txt`` gives.

The lesion mask is the slide's ASAP XML polygons of groups ``_0`` and ``_1`` (tumour) minus those of ``_2``
(non-tumour inside a lesion), rasterized over the patch (:func:`~monai_pixelcam.data.annotations.rasterize`); a
slide without XML (``normal_*``) has none. The recomputed metastatic fraction, the mask's share of the patch's
pixels, is checked against the name's: every patch further than ``tolerance`` from it is reported.

Command line: ``python -m monai_pixelcam.data.camelyon512 --slides DIR --annotations DIR --folds DIR --fold 0
--out ROOT [--datalist FILE]``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_png_atomic
from ..inference.wsi import close_slide, open_slide, read_rgb_region
from .annotations import rasterize, read_asap_xml
from .datalist import SPLITS, DatalistError
from .folds import find_fold_dir, fold_rows
from .validate import print_problems

__all__ = ["TUMOUR_GROUPS", "EXCLUDED_GROUPS", "PatchName", "parse_patch_name", "rebuild_camelyon512", "main"]

TUMOUR_GROUPS = ("_0", "_1")
EXCLUDED_GROUPS = ("_2",)
_NAME = re.compile(
    r"(?P<slide>(?:tumor|normal|test)_\d+)\.tif.*_x_(?P<x>\d+)_y_(?P<y>\d+)_tissue_(?P<tissue>[\d.]+)"
    r"_metastatic_(?P<metastatic>[\d.]+)_w_(?P<w>\d+)_h_(?P<h>\d+)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class PatchName:
    """What a CAMELYON512 patch name says: slide stem, level-0 ``x``, ``y``, size ``w`` x ``h``, fractions."""

    slide: str
    x: int
    y: int
    w: int
    h: int
    tissue: float
    metastatic: float


def parse_patch_name(name: str) -> PatchName:
    """Parse a CAMELYON512 patch file name (or path).

    Raises:
        DatalistError: the name does not encode a slide, ``x``, ``y``, fractions, ``w`` and ``h``.
    """
    match = _NAME.search(Path(name).name)
    if match is None:
        raise DatalistError(
            f"{name}: not a CAMELYON512 patch name (<slide>.tif..._x_X_y_Y_tissue_T_metastatic_M_w_W_h_H)"
        )
    g = match.groupdict()
    return PatchName(g["slide"].lower(), int(g["x"]), int(g["y"]), int(g["w"]), int(g["h"]),
                     float(g["tissue"].rstrip(".")), float(g["metastatic"].rstrip(".")))  # fmt: skip


def _index(folder: Path, suffix: str) -> dict[str, Path]:
    """Files with ``suffix`` under ``folder`` (any depth) by lower-case stem."""
    return {p.stem.lower(): p for p in folder.rglob(f"*{suffix}")} if folder.is_dir() else {}


def rebuild_camelyon512(
    slides_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    folds: str | os.PathLike,
    fold: int,
    out_root: str | os.PathLike,
    tolerance: float = 0.01,
) -> list[str]:
    """Write every patch and mask of fold ``fold``'s four splits under ``out_root`` at the paths the fold lists,
    cut from the slides in ``slides_dir`` (``<slide>.tif`` at any depth) with masks from
    ``annotations_dir/<slide>.xml``; ``out_root`` is then the dataset root of
    :func:`~monai_pixelcam.data.folds.fold_datalist`.

    Returns:
        the disagreements, each naming its patch: a recomputed metastatic fraction further than ``tolerance``
        from the name's. Patches are written all the same.

    Raises:
        DatalistError: every patch whose name cannot be parsed, whose slide is missing or that lies outside its
            slide, and every unreadable XML, all at once (nothing of those patches is written).
    """
    fold_dir = find_fold_dir(folds, "camelyon", fold)
    slides, xmls = _index(Path(slides_dir), ".tif"), _index(Path(annotations_dir), ".xml")
    out_root = Path(out_root)
    rows: dict[str, str] = {}
    problems: list[str] = []
    for split in SPLITS:
        localization = fold_dir / split / "localization.txt"
        if not localization.is_file():
            raise DatalistError(f"{localization}: missing (the fold's image,mask rows)")
        rows.update({image: mask for image, mask in fold_rows(localization, 2, problems)})
    by_slide: dict[str, list[tuple[str, str, PatchName]]] = {}
    for image, mask in rows.items():
        try:
            name = parse_patch_name(image)
        except DatalistError as e:
            problems.extend(e.problems)
            continue
        if name.slide not in slides:
            problems.append(f"{image}: slide {name.slide}.tif not found under {slides_dir}")
            continue
        by_slide.setdefault(name.slide, []).append((image, mask, name))
    polygons = {}
    for slide in by_slide:
        try:
            polygons[slide] = read_asap_xml(xmls[slide]) if slide in xmls else []
        except DatalistError as e:
            problems.extend(e.problems)
    if problems:
        raise DatalistError(problems)
    disagreements = []
    for slide, patches in sorted(by_slide.items()):
        reader, wsi = open_slide(slides[slide])
        try:
            height0, width0 = reader.get_size(wsi, 0)
            for image, mask, name in patches:
                if name.x + name.w > width0 or name.y + name.h > height0:
                    problems.append(f"{image}: the patch reaches past {slide} ({width0} x {height0})")
                    continue
                rgb = read_rgb_region(reader, wsi, (name.y, name.x), (name.h, name.w), 0)
                lesion = rasterize(polygons[slide], (name.x, name.y), (name.h, name.w), TUMOUR_GROUPS, EXCLUDED_GROUPS)
                write_png_atomic(out_root / image, rgb)
                if mask:
                    write_png_atomic(out_root / mask, lesion.astype(np.uint8) * 255)
                fraction = float(lesion.mean())
                if abs(fraction - name.metastatic) > tolerance:
                    disagreements.append(
                        f"{image}: metastatic fraction {fraction:.4f} from {slide}'s annotations, the name says "
                        f"{name.metastatic:.4f}"
                    )
        finally:
            close_slide(wsi)
    if problems:
        raise DatalistError(problems)
    return disagreements


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_pixelcam.data.camelyon512", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--slides", required=True, type=Path, help="CAMELYON16 slides (<slide>.tif, any depth)")
    parser.add_argument("--annotations", required=True, type=Path, help="their lesion XML (<slide>.xml)")
    parser.add_argument("--folds", required=True, type=Path, help="the published CAMELYON512 folds")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="dataset root to write the patches and masks into")
    parser.add_argument("--datalist", type=Path, help="also write the fold's datalist JSON here")
    parser.add_argument("--tolerance", type=float, default=0.01)
    args = parser.parse_args(argv)
    try:
        disagreements = rebuild_camelyon512(args.slides, args.annotations, args.folds, args.fold, args.out,
                                            args.tolerance)  # fmt: skip
        if args.datalist:
            from .folds import convert_folds

            print(convert_folds("camelyon", args.out, args.folds, args.fold, args.datalist))
    except DatalistError as e:
        return print_problems(args.folds, e)
    for line in disagreements:
        print(f"disagreement: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
