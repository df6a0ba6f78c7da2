"""The published WSOL folds (the splits of the reference code and of the histology WSOL survey) -> datalist JSON,
with exactly each split's membership: nothing is drawn, and nothing falls back to our own splits.

Layout, as published (``folds/wsol-done-right-splits/``)::

    GLAS/encoding.yaml                      {benign: 0, malignant: 1}
    GLAS/fold-0/train/image_ids.txt         one image path a line, relative to the dataset root
    GLAS/fold-0/train/class_labels.txt      path,label
    GLAS/fold-0/train/localization.txt      image_path,mask_path,   (an empty mask: no region of interest)
    GLAS/fold-0/train/image_sizes.txt       path,width,height
    GLAS/fold-0/{valcl,valpx,test}/...      the same
    CAMELYON512/...                         the same, classes normal and metastatic

The GlaS ids name the release folder with underscores (``Warwick_QU_Dataset_(Released_2016_07_08)/train_68.bmp``)
where the release has spaces; a path component that is not found is matched against the folder's entries with
spaces read as underscores. Every listed image and mask must exist and every image's size must be the one
``image_sizes.txt`` gives: all mismatches are reported together, each naming its file.

Command line: ``python -m monai_pixelcam.data.folds --dataset glas --src ROOT --folds DIR --fold 0 --out FILE``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .datalist import SPLITS, DatalistError
from .glas import GLAS_MPP
from .io import image_size
from .validate import print_problems, save_validated_datalist

__all__ = ["FOLD_DATASETS", "find_fold_dir", "read_encoding", "fold_rows", "fold_datalist", "convert_folds", "main"]

#: dataset name -> (its folder among the published folds, its negative classes, its images' microns per pixel)
FOLD_DATASETS = {
    "glas": ("GLAS", (), GLAS_MPP),
    # CAMELYON512 patches are cut at CAMELYON16's level 0 (about 0.243 um per pixel)
    "camelyon": ("CAMELYON512", ("normal",), 0.243),
}
_FILES = ("image_ids.txt", "class_labels.txt", "localization.txt", "image_sizes.txt")


def find_fold_dir(folds: str | os.PathLike, dataset: str, fold: int) -> Path:
    """The ``fold-<fold>`` folder: ``folds`` may be that folder, the dataset's folder (``.../GLAS``) or the folder
    of every dataset (``.../wsol-done-right-splits``).

    Raises:
        DatalistError: no such fold folder (names what was looked for).
    """
    if dataset not in FOLD_DATASETS:
        raise DatalistError(f"no published folds for dataset {dataset!r}; choose one of {sorted(FOLD_DATASETS)}")
    folds, name = Path(folds), f"fold-{int(fold)}"
    for candidate in (folds, folds / name, folds / FOLD_DATASETS[dataset][0] / name):
        if candidate.name == name and candidate.is_dir():
            return candidate
    raise DatalistError(
        f"{folds}: no {name} folder for {dataset} (looked for {folds / name} and "
        f"{folds / FOLD_DATASETS[dataset][0] / name})"
    )


def read_encoding(path: str | os.PathLike) -> dict[str, int]:
    """Class name -> index from an ``encoding.yaml`` (``{benign: 0, malignant: 1}`` or one ``name: index`` a line).

    Read by hand: a flat mapping of names to integers, and PyYAML is not a dependency of the package.

    Raises:
        DatalistError: unreadable, not a flat mapping, or the indices are not 0..K-1 (names the file).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatalistError(f"{path}: cannot read the class encoding ({e})") from None
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines()).strip().strip("{}")
    encoding = {}
    for part in body.replace("\n", ",").split(","):
        if not part.strip():
            continue
        name, sep, index = part.partition(":")
        name = name.strip().strip("'\"")
        if not sep or not name or not index.strip().lstrip("-").isdigit():
            raise DatalistError(f"{path}: expected 'name: index' entries, got {part.strip()!r}")
        encoding[name] = int(index)
    if sorted(encoding.values()) != list(range(len(encoding))) or len(encoding) < 2:
        raise DatalistError(f"{path}: class indices must be 0..K-1 for K >= 2 classes, got {encoding}")
    return encoding


def fold_rows(path: Path, columns: int, problems: list[str]) -> list[list[str]]:
    """Comma-separated rows of a fold file (blank lines skipped), each padded to ``columns`` stripped cells; a
    file that cannot be read adds a problem naming it and gives no rows."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        problems.append(f"{path}: cannot read ({e})")
        return []
    return [[c.strip() for c in (line.split(",") + [""] * columns)[:columns]] for line in lines if line.strip()]


def _resolve(root: Path, relative: str) -> Path | None:
    """``root / relative``, matching a component that is not found against its folder's entries with spaces read
    as underscores (the GlaS ids' release folder); None when nothing matches."""
    path = root
    for part in Path(relative).parts:
        if (path / part).exists():
            path = path / part
            continue
        if not path.is_dir():
            return None
        matches = [p for p in path.iterdir() if p.name.replace(" ", "_") == part]
        if len(matches) != 1:
            return None
        path = matches[0]
    return path


def fold_datalist(dataset: str, dataset_dir: str | os.PathLike, folds: str | os.PathLike, fold: int = 0) -> dict:
    """The datalist of fold ``fold`` of the published splits of ``dataset`` (``glas`` or ``camelyon``) over the
    dataset root ``dataset_dir``: items ``{"id", "image", "mask", "label"}`` per split, with exactly the fold's
    membership; ``classes`` in index order, ``negative_classes``, ``mpp``.

    Raises:
        DatalistError: every problem at once, each naming its file: a fold file missing or malformed, an image
            without a label or with an unknown one, an image or mask not found, a size that differs from
            ``image_sizes.txt``, an image id listed twice.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise DatalistError(f"dataset_dir {root} is not a folder (the {dataset} release the folds index)")
    fold_dir = find_fold_dir(folds, dataset, fold)
    beside = (fold_dir.parent / "encoding.yaml", fold_dir / "encoding.yaml")
    encoding_path = next((p for p in beside if p.is_file()), None)
    if encoding_path is None:
        raise DatalistError(f"{fold_dir.parent}: no encoding.yaml (class name -> index) beside the folds")
    encoding = read_encoding(encoding_path)
    classes = sorted(encoding, key=encoding.get)
    _, negative_names, mpp = FOLD_DATASETS[dataset]
    problems: list[str] = []
    out: dict = {"classes": classes, "negative_classes": [encoding[n] for n in negative_names if n in encoding]}
    if mpp is not None:
        out["mpp"] = mpp
    seen: dict[str, str] = {}
    for split in SPLITS:
        folder = fold_dir / split
        missing = [name for name in _FILES if not (folder / name).is_file()]
        if missing:
            problems.append(f"{folder}: missing {missing}")
            out[split] = []
            continue
        ids = [row[0] for row in fold_rows(folder / "image_ids.txt", 1, problems)]
        labels = {r[0]: r[1] for r in fold_rows(folder / "class_labels.txt", 2, problems)}
        masks = {r[0]: r[1] for r in fold_rows(folder / "localization.txt", 2, problems)}
        sizes = {r[0]: (r[1], r[2]) for r in fold_rows(folder / "image_sizes.txt", 3, problems)}
        items = []
        for rel in ids:
            where = f"{folder}: {rel}"
            label, known = labels.get(rel), sorted(encoding.values())
            if label is None or not label.lstrip("-").isdigit() or int(label) not in known:
                problems.append(f"{where}: label {label!r} in class_labels.txt is not one of {known}")
                continue
            image = _resolve(root, rel)
            if image is None or not image.is_file():
                problems.append(f"{where}: image not found under {root}")
                continue
            mask = None
            if masks.get(rel):
                mask = _resolve(root, masks[rel])
                if mask is None or not mask.is_file():
                    problems.append(f"{where}: mask {masks[rel]} not found under {root}")
                    continue
            expected, actual = sizes.get(rel), image_size(image)
            if expected is None:
                problems.append(f"{where}: no row in image_sizes.txt")
            elif actual is None or (str(actual[1]), str(actual[0])) != expected:
                got = "unreadable" if actual is None else f"{actual[1]} x {actual[0]}"
                problems.append(f"{where}: image is {got}, image_sizes.txt says {expected[0]} x {expected[1]}")
            item_id = Path(rel).stem
            if item_id in seen:
                problems.append(f"{where}: image id {item_id!r} listed twice (also {seen[item_id]})")
                continue
            seen[item_id] = where
            items.append({"id": item_id, "image": str(image), "mask": None if mask is None else str(mask),
                          "label": int(label)})  # fmt: skip
        out[split] = items
    if problems:
        raise DatalistError(problems)
    return out


def convert_folds(
    dataset: str,
    dataset_dir: str | os.PathLike,
    folds: str | os.PathLike,
    fold: int,
    out_json: str | os.PathLike,
    validate: bool = True,
) -> Path:
    """Write :func:`fold_datalist` to ``out_json`` (validated first unless ``validate`` is False: nothing is
    written when a file fails); returns its path."""
    return save_validated_datalist(fold_datalist(dataset, dataset_dir, folds, fold), out_json, validate)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monai_pixelcam.data.folds", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(FOLD_DATASETS))
    parser.add_argument("--src", required=True, type=Path, help="the dataset root the folds' paths are relative to")
    parser.add_argument("--folds", required=True, type=Path, help="the published folds (any level down to fold-N)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="datalist JSON to write")
    parser.add_argument("--no-validate", action="store_true", help="skip decoding every file before writing")
    args = parser.parse_args(argv)
    try:
        path = convert_folds(args.dataset, args.src, args.folds, args.fold, args.out, validate=not args.no_validate)
    except DatalistError as e:
        return print_problems(args.folds, e)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
