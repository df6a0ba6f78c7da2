"""GlaS (Warwick-QU gland segmentation, MICCAI 2015) in its original layout -> datalist JSON.

Expected folder (as released, e.g. ``Warwick QU Dataset (Released 2016_07_08)/``)::

    Grade.csv                       name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)
    train_1.bmp   train_1_anno.bmp  ... (85 training images)
    testA_1.bmp   testA_1_anno.bmp  ... (60)
    testB_1.bmp   testB_1_anno.bmp  ... (20)

``Grade.csv`` names images without extension; the released file has stray spaces in its header and
values (``" benign"``), which are stripped. The class is ``grade (GlaS)``: benign -> 0, malignant -> 1.
Annotation images are gland instance-id maps (0 = background, k > 0 = gland k); the datalist points
at them directly, since :func:`~monai_pixelcam.data.io.read_mask` reads id > 0 as foreground.

Scale: the GlaS slides were scanned at 0.465 um per pixel and released rescaled to 0.620 um per pixel, the
equivalent of a 20x objective (Sirinukunwattana et al. 2017); written as the datalist's ``"mpp"``
(:data:`GLAS_MPP`).

Splits: ``test`` = testA + testB (the challenge test sets); the training images are split into
``train`` / ``valcl`` / ``valpx`` by :func:`~monai_pixelcam.data.datalist.make_splits` (stratified,
seeded; valpx drawn from the validation images). Images of one patient may fall on both sides of the
train / valcl cut, as in the published WSOL folds.

Command line: ``python -m monai_pixelcam.data.glas --src DIR --out FILE.json [--seed 0]``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .datalist import DatalistError, make_splits
from .io import read_csv_table
from .validate import converter_main, save_validated_datalist

__all__ = ["GLAS_CLASSES", "GLAS_MPP", "convert_glas", "find_glas_root"]

GLAS_CLASSES = ["benign", "malignant"]
#: microns per pixel of the released images (20x equivalent)
GLAS_MPP = 0.62
_GRADE_COLUMN = "grade (glas)"
_NAME = re.compile(r"^(train|testa|testb)_\d+$", re.IGNORECASE)
_IMAGE_SUFFIXES = (".bmp", ".png", ".tif", ".tiff")


def find_glas_root(src_dir: str | os.PathLike) -> Path:
    """The folder holding ``Grade.csv``: ``src_dir`` itself or its only subfolder that has one.

    Raises:
        DatalistError: ``src_dir`` is not a folder, is empty, or no (or more than one) ``Grade.csv`` is found.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise DatalistError(f"{src}: GlaS folder not found" if not src.exists() else f"{src}: not a folder")
    entries = list(src.iterdir())
    if not entries:
        raise DatalistError(f"{src}: GlaS folder is empty (expected Grade.csv, train_N.bmp, train_N_anno.bmp, ...)")

    def has_grade(folder: Path) -> bool:
        return any(p.name.lower() == "grade.csv" and p.is_file() for p in folder.iterdir())

    if has_grade(src):
        return src
    found = [d for d in sorted(entries) if d.is_dir() and has_grade(d)]
    if len(found) == 1:
        return found[0]
    if found:
        raise DatalistError(f"{src}: several subfolders hold a Grade.csv: {[d.name for d in found]}; pass one of them")
    raise DatalistError(f"{src}: no Grade.csv here or in a subfolder (the GlaS release has one next to the images)")


def _read_grades(csv_path: Path) -> tuple[dict[str, tuple[int, str]], set[str], list[str]]:
    """name -> (label, line) from Grade.csv, every name it lists (lower case), and the problems found."""
    rows = read_csv_table(csv_path)
    columns = set(rows[0]) - {"_line"} if rows else set()
    missing = [c for c in ("name", _GRADE_COLUMN) if c not in columns]
    if not rows:
        raise DatalistError(f"{csv_path}: no image rows")
    if missing:
        raise DatalistError(f"{csv_path}: missing column(s) {missing}; found {sorted(columns)}")
    grades, problems = {}, []
    for row in rows:
        where = f"{csv_path}, line {row['_line']}"
        name, grade = Path(row["name"]).stem if row["name"] else "", row[_GRADE_COLUMN].lower()
        if not _NAME.match(name):
            problems.append(f"{where}: image name {row['name']!r} is not train_N, testA_N or testB_N")
        elif name in grades:
            problems.append(f"{where}: image {name} listed twice (also line {grades[name][1]})")
        elif grade not in GLAS_CLASSES:
            problems.append(f"{where}: unknown grade {row[_GRADE_COLUMN]!r} for {name} (expected {GLAS_CLASSES})")
        else:
            grades[name] = (GLAS_CLASSES.index(grade), row["_line"])
    return grades, {Path(row["name"]).stem.lower() for row in rows}, problems


def _find(files: dict[str, Path], stem: str) -> Path | None:
    for suffix in _IMAGE_SUFFIXES:
        p = files.get((stem + suffix).lower())
        if p is not None:
            return p
    return None


def convert_glas(
    src_dir: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    seed: int = 0,
    valcl_fraction: float = 0.2,
    valpx_per_class: int = 3,
    validate: bool = True,
) -> Path:
    """Write the datalist of a GlaS folder in its original layout (see the module docstring).

    Args:
        src_dir: the GlaS folder (or a folder whose only GlaS subfolder holds ``Grade.csv``).
        out_json: datalist JSON to write; image paths under its folder are stored relative to it.
        seed: seed of the train / valcl / valpx draw.
        valcl_fraction: fraction of each class's training images used for validation (valcl + valpx).
        valpx_per_class: pixel-annotated validation images per class, taken from the validation images.
        validate: decode every image and annotation (:func:`validate_datalist`) before writing.

    Returns:
        the path of the datalist JSON (classes ``["benign", "malignant"]``, no negative class).

    Raises:
        DatalistError: listing every problem: missing Grade.csv or folder, empty folder, unknown grade,
            image listed but absent, image without annotation, image file not listed in Grade.csv.
    """
    root = find_glas_root(src_dir)
    csv_path = next(p for p in root.iterdir() if p.name.lower() == "grade.csv")
    grades, listed, problems = _read_grades(csv_path)
    files = {p.name.lower(): p for p in root.iterdir() if p.is_file()}

    for fname, path in sorted(files.items()):
        stem = Path(fname).stem
        if path.suffix.lower() in _IMAGE_SUFFIXES and _NAME.match(stem) and stem not in listed:
            problems.append(f"{path}: image not listed in {csv_path.name}")

    train, test = [], []
    for name, (label, line) in sorted(grades.items()):
        image, anno = _find(files, name), _find(files, name + "_anno")
        if image is None:
            problems.append(f"{root / (name + '.bmp')}: image listed in {csv_path.name} (line {line}) not found")
            continue
        if anno is None:
            problems.append(f"{image}: image has no annotation {name}_anno.bmp")
            continue
        item = {"image": str(image.resolve()), "mask": str(anno.resolve()), "label": label, "id": name}
        (train if name.lower().startswith("train") else test).append(item)
    if not problems and not train:
        problems.append(f"{root}: no training images (train_N.bmp) listed in {csv_path.name}")
    if not problems and not test:
        problems.append(f"{root}: no test images (testA_N.bmp, testB_N.bmp) listed in {csv_path.name}")
    if problems:
        raise DatalistError(problems)

    splits = make_splits(train, test, valcl_fraction=valcl_fraction, valpx_per_class=valpx_per_class, seed=seed)
    datalist = {"dataset": "glas", "classes": list(GLAS_CLASSES), "negative_classes": [], "mpp": GLAS_MPP, **splits}
    return save_validated_datalist(datalist, out_json, validate=validate)


def main(argv: Sequence[str] | None = None) -> int:
    return converter_main(
        argv,
        "python -m monai_pixelcam.data.glas",
        "Convert the GlaS (Warwick-QU) folder in its original layout into a datalist JSON.",
        "GlaS folder with Grade.csv and the .bmp files",
        convert_glas,
        [("valcl_fraction", 0.2)],
    )


if __name__ == "__main__":
    sys.exit(main())
