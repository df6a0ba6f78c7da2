"""CAMELYON16 patches (a CSV of ``image, mask, label`` rows, as histology WSOL benchmarks distribute the
crops) -> datalist JSON.

CSV (header row required; column names are case- and space-insensitive)::

    image,mask,label[,split][,id]
    patches/normal_001.png,,normal
    patches/tumor_001.png,masks/tumor_001.png,tumor
    patches/tumor_002.png,masks/tumor_002.png,1,test

* ``image``, ``mask``: paths relative to the CSV's folder, or absolute. ``mask`` may be empty (also
  ``none``, ``null``, ``nan``, as pandas writes missing values) or the column may be absent: a normal
  patch without mask is an empty mask; a tumor patch without mask can only be used in ``train`` and
  ``valcl`` (localization is selected and measured on ``valpx`` / ``test``, which need masks).
* ``label``: ``0`` / ``1`` or the class name ``normal`` / ``tumor``.
* ``split`` (optional, all rows or none): ``train``, ``valcl`` (``val`` / ``validation`` accepted),
  ``valpx``, ``test``; honoured as given. When no row says ``valpx``, ``valpx_per_class`` images per
  class with a mask are drawn from ``valcl``. Without the column, splits are drawn by
  :func:`~monai_pixelcam.data.datalist.make_splits`: ``test_fraction`` of each class among the rows
  that can be evaluated (normal rows, tumor rows with masks), then valcl / valpx from the rest;
  tumor rows without masks go to train / valcl only.
* ``id`` (optional): unique image ids; by default the image file name without extension, or its
  path relative to the CSV folder when names repeat.
* ``mpp`` (optional): microns per pixel of the patch (CAMELYON16 level 0 is about 0.243; patches cut at
  another level or resized have another); empty cells take ``convert_camelyon(mpp=...)``, the dataset's.

Classes ``["normal", "tumor"]``, ``negative_classes`` ``[0]``.

Command line: ``python -m monai_pixelcam.data.camelyon --src CSV_OR_DIR --out FILE.json [--seed 0]``.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .datalist import DatalistError, make_splits
from .io import read_csv_table
from .validate import converter_main, save_validated_datalist

__all__ = ["CAMELYON_CLASSES", "convert_camelyon", "find_camelyon_csv"]

CAMELYON_CLASSES = ["normal", "tumor"]
_NO_MASK = {"", "none", "null", "nan"}
_SPLIT_NAMES = {
    "train": "train",
    "valcl": "valcl",
    "val": "valcl",
    "validation": "valcl",
    "valpx": "valpx",
    "test": "test",
}


def find_camelyon_csv(src: str | os.PathLike) -> Path:
    """``src`` itself when it is a CSV file, else the only ``*.csv`` file directly inside the folder ``src``.

    Raises:
        DatalistError: ``src`` does not exist, or the folder holds no CSV or several.
    """
    src = Path(src)
    if src.is_file():
        return src
    if not src.is_dir():
        raise DatalistError(f"{src}: CAMELYON16 patch CSV or folder not found")
    csvs = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if len(csvs) == 1:
        return csvs[0]
    if not csvs:
        raise DatalistError(f"{src}: no .csv file in this folder (expected one with columns image, mask, label)")
    raise DatalistError(f"{src}: several .csv files ({[p.name for p in csvs]}); pass the one to use")


def _parse_label(value: str) -> int | None:
    v = value.strip().lower()
    if v in CAMELYON_CLASSES:
        return CAMELYON_CLASSES.index(v)
    try:
        f = float(v)
    except ValueError:
        return None
    return int(f) if f.is_integer() and int(f) in (0, 1) else None


def _resolve(value: str, base: Path) -> Path:
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def convert_camelyon(
    src: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    seed: int = 0,
    test_fraction: float = 0.3,
    valcl_fraction: float = 0.2,
    valpx_per_class: int = 3,
    validate: bool = True,
    mpp: float | None = None,
) -> Path:
    """Write the datalist of a CAMELYON16 patch CSV (format in the module docstring).

    Args:
        src: the CSV file, or a folder holding exactly one CSV.
        out_json: datalist JSON to write; paths under its folder are stored relative to it.
        seed: seed of the split draw (unused when the CSV has a ``split`` column, except for valpx).
        test_fraction: per class, among rows that can be evaluated, when splits are drawn.
        valcl_fraction: per class, of the non-test rows, for validation (valcl + valpx).
        valpx_per_class: pixel-annotated validation images per class.
        validate: decode every image and mask (:func:`validate_datalist`) before writing.
        mpp: the patches' microns per pixel, written as the datalist's ``"mpp"`` (None: unknown); a row's own
            ``mpp`` cell overrides it.

    Returns:
        the datalist JSON path.

    Raises:
        DatalistError: listing every problem, each naming the CSV line or file: missing columns, empty
            image path, file not found, unknown label or split, tumor row without mask in valpx / test,
            split column filled on some rows only, duplicate ids.
    """
    csv_path = find_camelyon_csv(src)
    base = csv_path.parent.resolve()
    rows = read_csv_table(csv_path)
    if not rows:
        raise DatalistError(f"{csv_path}: no patch rows")
    columns = set(rows[0]) - {"_line"}
    missing = [c for c in ("image", "label") if c not in columns]
    if missing:
        raise DatalistError(f"{csv_path}: missing column(s) {missing}; found {sorted(columns)}")
    has_split = "split" in columns and any(r["split"] for r in rows)

    problems: list[str] = []
    items: list[tuple[dict, str | None, str]] = []  # (item, split or None, line)
    for row in rows:
        where = f"{csv_path}, line {row['_line']}"
        label = _parse_label(row["label"])
        if label is None:
            problems.append(f"{where}: label {row['label']!r} is not 0, 1, 'normal' or 'tumor'")
        if not row["image"]:
            problems.append(f"{where}: empty image path")
            continue
        image = _resolve(row["image"], base)
        if not image.is_file():
            problems.append(f"{where}: image {image} not found")
        mask_value = row.get("mask", "")
        mask = None if mask_value.lower() in _NO_MASK else _resolve(mask_value, base)
        if mask is not None and not mask.is_file():
            problems.append(f"{where}: mask {mask} not found")
        split = None
        if has_split:
            split = _SPLIT_NAMES.get(row["split"].lower())
            if not row["split"]:
                problems.append(f"{where}: empty split (fill the split column on every row or on none)")
            elif split is None:
                problems.append(f"{where}: split {row['split']!r} is not one of {sorted(_SPLIT_NAMES)}")
            elif split in ("valpx", "test") and label == 1 and mask is None:
                problems.append(f"{where}: tumor patch {image.name} in split '{split}' has no mask")
        if label is None:
            continue
        item = {"image": str(image), "mask": str(mask) if mask is not None else None, "label": label}
        if row.get("id"):
            item["id"] = row["id"]
        if row.get("mpp"):
            try:
                item["mpp"] = float(row["mpp"])
            except ValueError:
                problems.append(f"{where}: mpp {row['mpp']!r} is not a number of microns per pixel")
        items.append((item, split, row["_line"]))

    _assign_ids(items, base, problems, csv_path)
    if problems:
        raise DatalistError(problems)

    if has_split:
        splits = {s: [it for it, sp, _ in items if sp == s] for s in ("train", "valcl", "valpx", "test")}
        if not splits["valpx"]:
            # make_splits with every image in the validation part only moves valpx images out of valcl
            drawn = make_splits(
                splits["valcl"], valcl_fraction=1.0, valpx_per_class=valpx_per_class, seed=seed, negative_classes=[0]
            )
            splits["valcl"], splits["valpx"] = drawn["valcl"], drawn["valpx"]
    else:
        evaluable = [it for it, _, _ in items if it["label"] == 0 or it["mask"]]
        train_only = [it for it, _, _ in items if it["label"] == 1 and not it["mask"]]
        splits = make_splits(
            evaluable,
            test_fraction=test_fraction,
            valcl_fraction=valcl_fraction,
            valpx_per_class=valpx_per_class,
            seed=seed,
            negative_classes=[0],
        )
        if train_only:
            extra = make_splits(train_only, valcl_fraction=valcl_fraction, valpx_per_class=0, seed=seed)
            splits["train"] += extra["train"]
            splits["valcl"] += extra["valcl"]
    datalist = {"dataset": "camelyon16", "classes": list(CAMELYON_CLASSES), "negative_classes": [0], **splits}
    if mpp is not None:
        datalist["mpp"] = float(mpp)
    return save_validated_datalist(datalist, out_json, validate=validate)


def _assign_ids(items: list[tuple[dict, str | None, str]], base: Path, problems: list[str], csv_path: Path) -> None:
    """Give each item an ``id``: the CSV's, else the file stem, else (stems repeat) the path under ``base``."""
    stems = Counter(Path(it["image"]).stem for it, _, _ in items if "id" not in it)
    for it, _, _ in items:
        if "id" in it:
            continue
        p = Path(it["image"])
        if stems[p.stem] == 1:
            it["id"] = p.stem
        else:
            try:
                it["id"] = p.with_suffix("").relative_to(base).as_posix()
            except ValueError:
                it["id"] = p.with_suffix("").as_posix()
    seen: dict[str, str] = {}
    for it, _, line in items:
        if it["id"] in seen:
            problems.append(f"{csv_path}, line {line}: duplicate id {it['id']!r} (also line {seen[it['id']]}); "
                            "is the same patch listed twice?")
        else:
            seen[it["id"]] = line


def main(argv: Sequence[str] | None = None) -> int:
    return converter_main(
        argv,
        "python -m monai_pixelcam.data.camelyon",
        "Convert a CAMELYON16 patch CSV (image, mask, label[, split]) into a datalist JSON.",
        "the CSV, or a folder holding exactly one CSV",
        convert_camelyon,
        [("test_fraction", 0.3), ("valcl_fraction", 0.2), ("mpp", None)],
    )


if __name__ == "__main__":
    sys.exit(main())
