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

The rebuild reads one patch at a time (never a whole level in memory), one slide per worker process
(``workers``), shows a progress bar, and resumes: a patch whose image (and mask) are already written is not
cut again (every file is written atomically, so an existing one is whole).

Slides that no fold covers give new patches by the same rule (:func:`sample_camelyon512`): on a grid of
``patch_size`` cells, a cell whose tissue fraction (HSV saturation, on a thumbnail) is at least ``min_tissue``;
from tumour slides the cells whose metastatic fraction is at least ``min_metastatic``, from normal slides any
such cell. Patches are named as CAMELYON512's, with the recomputed fractions, and split by slide.

Command line: ``python -m monai_pixelcam.data.camelyon512 --slides DIR --annotations DIR --folds DIR --fold 0
--out ROOT [--datalist FILE] [--workers N] [--sample-per-slide N --sample-datalist FILE]``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..atomic import write_png_atomic
from ..inference.windows import tissue_mask
from ..inference.wsi import close_slide, open_slide, read_rgb_region, read_thumbnail
from .annotations import Polygon, rasterize, read_asap_xml
from .datalist import SPLITS, DatalistError, save_datalist
from .folds import find_fold_dir, fold_rows
from .validate import print_problems

__all__ = [
    "TUMOUR_GROUPS",
    "EXCLUDED_GROUPS",
    "CLASSES",
    "PatchName",
    "parse_patch_name",
    "rebuild_camelyon512",
    "sample_camelyon512",
    "main",
]

TUMOUR_GROUPS = ("_0", "_1")
EXCLUDED_GROUPS = ("_2",)
#: CAMELYON512's classes (its ``encoding.yaml``), in label order
CLASSES = ("normal", "metastatic")
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
    workers: int = 1,
    progress: bool = True,
) -> list[str]:
    """Write every patch and mask of fold ``fold``'s four splits under ``out_root`` at the paths the fold lists,
    cut from the slides in ``slides_dir`` (``<slide>.tif`` at any depth) with masks from
    ``annotations_dir/<slide>.xml``; ``out_root`` is then the dataset root of
    :func:`~monai_pixelcam.data.folds.fold_datalist`. ``workers`` processes cut one slide each; patches
    already written are kept (a rerun resumes); ``progress`` shows a bar over the patches.

    Returns:
        the disagreements, each naming its patch: a recomputed metastatic fraction further than ``tolerance``
        from the name's. Patches are written all the same.

    Raises:
        DatalistError: every patch whose name cannot be parsed, whose slide is missing or that lies outside its
            slide, and every unreadable XML, all at once (nothing of those patches is written).
    """
    slides, xmls = _index(Path(slides_dir), ".tif"), _index(Path(annotations_dir), ".xml")
    out_root = Path(out_root)
    rows = _fold_localization(folds, fold)
    problems: list[str] = []
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
    jobs = [(str(slides[slide]), polygons[slide], patches, str(out_root), tolerance)
            for slide, patches in sorted(by_slide.items())]
    disagreements = []
    with tqdm(total=len(rows), desc="CAMELYON512 patches", unit="patch", disable=not progress) as bar:
        for found, bad, done in _map(_rebuild_slide, jobs, workers):
            disagreements += found
            problems += bad
            bar.update(done)
    if problems:
        raise DatalistError(problems)
    return disagreements


def _fold_localization(folds: str | os.PathLike, fold: int) -> dict[str, str]:
    """``{image: mask}`` of every row of the fold's four ``localization.txt`` (mask "" for none).

    Raises:
        DatalistError: a split's file is missing, or rows that are not ``image,mask`` (all named).
    """
    fold_dir, rows, problems = find_fold_dir(folds, "camelyon", fold), {}, []
    for split in SPLITS:
        localization = fold_dir / split / "localization.txt"
        if not localization.is_file():
            raise DatalistError(f"{localization}: missing (the fold's image,mask rows)")
        rows.update({image: mask for image, mask in fold_rows(localization, 2, problems)})
    if problems:
        raise DatalistError(problems)
    return rows


def _map(function, jobs: list[tuple], workers: int):
    """``function(*job)`` for every job, in order: in this process, or in ``workers`` processes (slides are
    independent; each reads its own file)."""
    if int(workers) <= 1 or len(jobs) <= 1:
        yield from (function(*job) for job in jobs)
        return
    with ProcessPoolExecutor(max_workers=int(workers)) as pool:
        yield from pool.map(function, *zip(*jobs))


def _written(root: Path, *names: str | None) -> bool:
    """Whether every named file (empty or None names left out) is under ``root``: files are written atomically,
    so one that exists is whole."""
    return all((root / n).is_file() for n in names if n)


def _write_patch(reader, wsi, image: Path, mask: Path | None, lesion: np.ndarray, x: int, y: int) -> None:
    """A patch's level-0 pixels at ``(x, y)``, of ``lesion``'s size, and, when ``mask`` is named, ``lesion`` as
    its 0/255 mask."""
    write_png_atomic(image, read_rgb_region(reader, wsi, (y, x), lesion.shape, 0))
    if mask is not None:
        write_png_atomic(mask, lesion.astype(np.uint8) * 255)


def _rebuild_slide(
    slide: str, polygons: list[Polygon], patches: list[tuple[str, str, PatchName]], out_root: str, tolerance: float
) -> tuple[list[str], list[str], int]:
    """One slide's patches (a worker's job): ``(disagreements, problems, patches done)``. Patches already
    written are not cut again (the slide is opened only when one is missing); their fraction is recomputed
    from the polygons alone."""
    out_root, name0 = Path(out_root), Path(slide).stem
    disagreements, problems = [], []
    reader = wsi = None
    try:
        for image, mask, name in patches:
            lesion = rasterize(polygons, (name.x, name.y), (name.h, name.w), TUMOUR_GROUPS, EXCLUDED_GROUPS)
            if not _written(out_root, image, mask):
                if reader is None:
                    reader, wsi = open_slide(slide)
                    height0, width0 = reader.get_size(wsi, 0)
                if name.x + name.w > width0 or name.y + name.h > height0:
                    problems.append(f"{image}: the patch reaches past {name0} ({width0} x {height0})")
                    continue
                _write_patch(reader, wsi, out_root / image, out_root / mask if mask else None, lesion, name.x, name.y)
            fraction = float(lesion.mean())
            if abs(fraction - name.metastatic) > tolerance:
                disagreements.append(
                    f"{image}: metastatic fraction {fraction:.4f} from {name0}'s annotations, the name says "
                    f"{name.metastatic:.4f}"
                )
    finally:
        if wsi is not None:
            close_slide(wsi)
    return disagreements, problems, len(patches)


def _patch_name(slide: str, x: int, y: int, tissue: float, metastatic: float, side: int) -> str:
    """A patch path in CAMELYON512's form (its folder and name encode the slide, the cut and the fractions)."""
    kind = "tumor" if slide.lower().startswith("tumor") else "normal"
    folder = "metastatic-patches" if metastatic > 0 else "normal-patches"
    return (f"{folder}/sampled/{kind}/{slide}/Patch_file_sampled-{kind}-{slide}.tif_x_{x}_y_{y}_tissue_{tissue:.4f}"
            f"_metastatic_{metastatic:.4f}_w_{side}_h_{side}.png")  # fmt: skip


def _sample_slide(
    slide: str, polygons: list[Polygon], out_root: str, patch_size: int, min_tissue: float, min_metastatic: float,
    per_slide: int, seed: int,
) -> list[dict]:
    """Up to ``per_slide`` patches of one slide by the rule of :func:`sample_camelyon512` (a worker's job),
    written under ``out_root`` (kept when already there); their datalist items."""
    out_root, name = Path(out_root), Path(slide).stem
    tumour_slide = bool(polygons)
    reader, wsi = open_slide(slide)
    try:
        height0, width0 = reader.get_size(wsi, 0)
        downsamples = [reader.get_downsample_ratio(wsi, lv) for lv in range(reader.get_level_count(wsi))]
        # the coarsest level that still gives a cell 8 x 8 pixels or more: fractions to a 1/64 step
        level = max((i for i, d in enumerate(downsamples) if d <= patch_size / 8), default=0)
        thumb, factor = read_thumbnail(reader, wsi, level, max_pixels=16 * 1024 * 1024)
        step = downsamples[level] * factor  # level-0 pixels per thumbnail pixel
        tissue, _ = tissue_mask(thumb)
        lesion = rasterize(polygons, (0, 0), tissue.shape, TUMOUR_GROUPS, EXCLUDED_GROUPS, downsample=step)
        cells = []
        for r in range(height0 // patch_size):
            for c in range(width0 // patch_size):
                rows = slice(math.floor(r * patch_size / step), math.ceil((r + 1) * patch_size / step))
                cols = slice(math.floor(c * patch_size / step), math.ceil((c + 1) * patch_size / step))
                t, m = float(tissue[rows, cols].mean()), float(lesion[rows, cols].mean())
                if t >= min_tissue and (m >= min_metastatic if tumour_slide else True):
                    cells.append((r, c, t))
        rng = np.random.default_rng([int(seed), *name.encode()])
        chosen = sorted(cells[i] for i in rng.permutation(len(cells))[:per_slide])
        items = []
        for r, c, t in chosen:
            x, y = c * patch_size, r * patch_size
            mask = rasterize(polygons, (x, y), (patch_size, patch_size), TUMOUR_GROUPS, EXCLUDED_GROUPS)
            metastatic = float(mask.mean())
            image = _patch_name(name, x, y, t, metastatic, patch_size)
            mask_name = image.replace("Patch_file", "mask_file") if metastatic > 0 else None
            if not _written(out_root, image, mask_name):
                _write_patch(reader, wsi, out_root / image, out_root / mask_name if mask_name else None, mask, x, y)
            items.append({"image": str(out_root / image), "mask": str(out_root / mask_name) if mask_name else None,
                          "label": int(metastatic > 0), "id": Path(image).stem, "slide": name})
        return items
    finally:
        close_slide(wsi)


def sample_camelyon512(
    slides_dir: str | os.PathLike,
    annotations_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    exclude: Sequence[str] = (),
    patch_size: int = 512,
    min_tissue: float = 0.1,
    min_metastatic: float = 0.2,
    per_slide: int = 50,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """New CAMELYON512-style patches from the slides of ``slides_dir`` not in ``exclude`` (e.g. those a fold
    covers), split by slide.

    Args:
        slides_dir, annotations_dir: ``<slide>.tif`` (any depth) and their lesion ``<slide>.xml``; a slide with
            lesion polygons gives tumour patches, one without gives normal patches.
        out_root: where the patches and masks are written (paths as CAMELYON512 names them).
        exclude: slide names (stems) to leave out.
        patch_size: level-0 side of a patch (512 for CAMELYON512).
        min_tissue: least tissue fraction of a patch, in [0, 1].
        min_metastatic: least metastatic fraction of a tumour slide's patch, in (0, 1].
        per_slide: most patches per slide (drawn at random among those that qualify, from ``seed``).
        fractions: share of the slides of each kind in ``valcl``, ``valpx`` and ``test`` (default 0.1, 0.1,
            0.2); the rest train. Tumour slides go to valpx/test first, so that they have masks.
        workers: processes, one slide each; progress: a bar over the slides.

    Returns:
        the datalist dict (``classes`` ``normal``/``metastatic``, ``negative_classes`` ``[0]``, the four
        splits); no slide has patches in two splits.

    Raises:
        DatalistError: bad settings, or no slide left to sample.
    """
    if not (0 <= min_tissue <= 1 and 0 < min_metastatic <= 1 and int(per_slide) > 0 and int(patch_size) > 0):
        raise DatalistError(
            f"sampling needs min_tissue in [0, 1], min_metastatic in (0, 1], per_slide > 0 and patch_size > 0; got "
            f"{min_tissue}, {min_metastatic}, {per_slide}, {patch_size}"
        )
    fractions = {"valcl": 0.1, "valpx": 0.1, "test": 0.2, **(fractions or {})}
    slides, xmls = _index(Path(slides_dir), ".tif"), _index(Path(annotations_dir), ".xml")
    names = sorted(set(slides) - set(exclude))
    if not names:
        raise DatalistError(f"{slides_dir}: no slide left to sample (all {len(slides)} are excluded)")
    polygons = {n: read_asap_xml(xmls[n]) if n in xmls else [] for n in names}
    split_of: dict[str, str] = {}
    rng = np.random.default_rng(seed)
    for tumour in (True, False):
        group = [n for n in names if bool(polygons[n]) == tumour]
        group = [group[i] for i in rng.permutation(len(group))]
        order = ("valpx", "test", "valcl") if tumour else ("valcl", "test", "valpx")
        start = 0
        for split in order:
            count = round(fractions[split] * len(group))
            split_of.update({n: split for n in group[start : start + count]})
            start += count
        split_of.update({n: "train" for n in group[start:]})
    jobs = [(str(slides[n]), polygons[n], str(out_root), int(patch_size), float(min_tissue), float(min_metastatic),
             int(per_slide), int(seed)) for n in names]  # fmt: skip
    datalist = {"classes": list(CLASSES), "negative_classes": [0], **{split: [] for split in SPLITS}}
    with tqdm(total=len(jobs), desc="sampled slides", unit="slide", disable=not progress) as bar:
        for n, items in zip(names, _map(_sample_slide, jobs, workers)):
            datalist[split_of[n]].extend(items)
            bar.update(1)
    return datalist


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
    parser.add_argument("--workers", type=int, default=1, help="processes, one slide each")
    parser.add_argument("--sample-per-slide", type=int, default=0,
                        help="also sample up to N patches from every slide the fold does not cover")
    parser.add_argument("--sample-datalist", type=Path, help="the sampled patches' datalist JSON")
    args = parser.parse_args(argv)
    try:
        if args.sample_per_slide and not args.sample_datalist:
            raise DatalistError("--sample-per-slide needs --sample-datalist FILE")
        disagreements = rebuild_camelyon512(args.slides, args.annotations, args.folds, args.fold, args.out,
                                            args.tolerance, workers=args.workers)  # fmt: skip
        if args.datalist:
            from .folds import convert_folds

            print(convert_folds("camelyon", args.out, args.folds, args.fold, args.datalist))
        if args.sample_per_slide:
            covered = {parse_patch_name(image).slide for image in _fold_localization(args.folds, args.fold)}
            sampled = sample_camelyon512(args.slides, args.annotations, args.out, exclude=sorted(covered),
                                         per_slide=args.sample_per_slide, workers=args.workers)  # fmt: skip
            print(save_datalist(sampled, args.sample_datalist))
    except DatalistError as e:
        return print_problems(args.folds, e)
    for line in disagreements:
        print(f"disagreement: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
