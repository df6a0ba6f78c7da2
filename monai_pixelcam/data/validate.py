"""Input checks before any training: one pass over a datalist that reports every problem at once.

``validate_datalist`` raises a single :class:`~monai_pixelcam.data.datalist.DatalistError` whose
message has one line per problem, each naming the split, index, id and file or value concerned:

* structure: ``classes`` missing or not unique non-empty names; ``negative_classes`` not labels; an
  ``mpp`` (the datalist's or an item's) that is not a positive number;
  a requested split missing or empty; an item that is not a dict or lacks ``image``, ``label`` or
  ``id``; a label that is not an int in ``range(len(classes))``; an id that is not a non-empty str;
  the same id, or the same image file, twice (across all checked splits, so a test image cannot
  leak into training);
* masks required: every ``valpx`` and ``test`` item needs a mask unless its label is in
  ``negative_classes`` (a missing mask of a negative image means "empty"): these splits are where
  localization is selected and measured;
* files: each image is opened and fully decoded once (a truncated or corrupt file is caught here,
  not mid-epoch); each mask is decoded once, must have the image's height and width, and must be a
  plausible mask (rule in :func:`mask_problem`).

Command line: ``python -m monai_pixelcam.data.validate datalist.json [--splits train valcl] [--no-masks]``
exits 0 and prints a summary when the datalist is valid, else prints the problems and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .datalist import SPLITS, DatalistError, load_datalist, mpp_problems, save_datalist
from .io import read_pixels, read_rgb

__all__ = [
    "validate_datalist",
    "save_validated_datalist",
    "print_problems",
    "mask_problem",
    "MAX_LABEL_MAP_EDGE_FRACTION",
]

#: A label map (binary or instance ids) is piecewise constant: only region borders change value. In a
#: photograph nearly every pair of neighbouring pixels differs (sensor noise, texture). GlaS instance
#: maps measure about 1-3 %, small synthetic blobs on a 32 x 32 image about 10 %, natural images
#: 60-100 %.
MAX_LABEL_MAP_EDGE_FRACTION = 0.25


def _edge_fraction(codes: np.ndarray) -> float:
    """Fraction of 4-neighbour pixel pairs of an ``H x W`` array whose values differ."""
    h, w = codes.shape
    pairs = h * (w - 1) + (h - 1) * w
    if pairs == 0:
        return 0.0
    changes = np.count_nonzero(codes[:, 1:] != codes[:, :-1]) + np.count_nonzero(codes[1:, :] != codes[:-1, :])
    return changes / pairs


def mask_problem(pixels: np.ndarray, has_alpha: bool = False) -> str | None:
    """Say why decoded mask pixels are not a usable mask, or return None when they are.

    ``pixels`` are as returned by :func:`~monai_pixelcam.data.io.read_pixels` with
    ``palette_as_index=True`` (``H x W`` or ``H x W x C``). The foreground rule of
    :func:`~monai_pixelcam.data.io.read_mask` (value > 0, or > threshold for floats) turns any array into
    {0, 1}; this check catches files for which that result would be meaningless:

    * float masks must be finite and lie in [0, 1] (soft masks are thresholded);
    * integer masks (one channel, or colours, each distinct colour counting as one value; pixels
      with alpha 0 count as 0) are accepted when they hold at most two distinct values (a binary mask
      of any coding: bool, 0/1, 0/255, black/colour), or when they are a label map: piecewise constant
      (at most :data:`MAX_LABEL_MAP_EDGE_FRACTION` of neighbouring pixel pairs differ), as gland
      instance-id annotations are, and for one channel, ids 1..K of which at least half are used (a soft
      map quantised to levels 0, 17, 34, ... is piecewise constant too, but read as a label map almost
      every pixel would be foreground);
    * with more than one value, the value 0 (background) must be present: masks coded with a nonzero
      background (e.g. 1 = background, 2 = object) would otherwise read as all foreground.

    A grey or colour photograph given as a mask fails the label-map test (its neighbours differ
    almost everywhere), and so does a JPEG-compressed mask whose ringing would turn into foreground.
    """
    arr = pixels
    alpha = None
    if has_alpha and arr.ndim == 3:
        arr, alpha = arr[..., :-1], arr[..., -1]
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            return "float mask holds NaN or infinite values"
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            return f"float mask values lie in [{lo:g}, {hi:g}], expected [0, 1]"
        return None
    if arr.dtype == bool:
        return None
    if arr.ndim == 3:  # one code per colour, so that distinct colours are distinct labels
        arr = arr.astype(np.int64)
        codes = np.zeros(arr.shape[:2], dtype=np.int64)
        for c in range(arr.shape[-1]):
            codes = codes * 65536 + np.clip(arr[..., c], 0, 65535)
    else:
        codes = arr
    if alpha is not None:
        codes = np.where(alpha > 0, codes, 0)
    values = np.unique(codes)
    if len(values) <= 1:
        return None
    if len(values) > 2:
        edges = _edge_fraction(codes)
        if edges > MAX_LABEL_MAP_EDGE_FRACTION:
            return (
                f"not a binary mask or a label map: {len(values)} distinct values and {100 * edges:.0f}% of "
                f"neighbouring pixels differ (a label map changes only at region borders, at most "
                f"{100 * MAX_LABEL_MAP_EDGE_FRACTION:.0f}%); is this an image rather than a mask?"
            )
        ids = values[values > 0]
        if arr.ndim == 2 and int(ids.max()) > 2 * len(ids):
            shown = ", ".join(str(int(v)) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            return (
                f"not a binary mask or a label map: its {len(values)} values ({shown}) are not the ids 1..K of a "
                f"label map (only {len(ids)} of the {int(ids.max())} ids up to its largest are used); a soft or "
                "quantised map must be thresholded to 0/1 first"
            )
    if not np.any(values == 0):
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
        return (
            f"no background value 0 among its {len(values)} values ({shown}); foreground is value > 0, "
            "so the whole mask would be foreground"
        )
    return None


def _check_image(path: str) -> tuple[tuple[int, int] | None, str | None]:
    try:
        rgb = read_rgb(path)
    except DatalistError as e:
        return None, "; ".join(e.problems)
    return rgb.shape[:2], None


def _check_mask(path: str) -> tuple[tuple[int, int] | None, str | None]:
    try:
        pixels, has_alpha = read_pixels(path, palette_as_index=True)
    except DatalistError as e:
        return None, "; ".join(e.problems)
    problem = mask_problem(pixels, has_alpha)
    return pixels.shape[:2], (f"{path}: {problem}" if problem else None)


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and str(value) != ""


def _structure_problems(datalist: Mapping, splits: Sequence[str]) -> tuple[list[str], list[tuple[str, int, dict]]]:
    """Checks that need no file access; returns the problems and the items whose files can be checked."""
    problems: list[str] = mpp_problems(datalist)
    classes = datalist.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        problems.append(f"'classes' must be a non-empty list of class names, got {classes!r}")
        num_classes = None
    else:
        num_classes = len(classes)
        if len(set(classes)) != len(classes):
            problems.append(f"'classes' has repeated names: {classes}")
    negative = datalist.get("negative_classes", [])
    if not isinstance(negative, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and (num_classes is None or 0 <= c < num_classes)
        for c in negative
    ):
        problems.append(f"'negative_classes' must be a list of labels in range({num_classes}), got {negative!r}")
        negative = []
    negative = set(negative)

    seen_ids: dict[str, str] = {}
    seen_images: dict[str, str] = {}
    checkable: list[tuple[str, int, dict]] = []
    for split in splits:
        if split not in SPLITS:
            problems.append(f"unknown split '{split}' (splits are {SPLITS})")
            continue
        items = datalist.get(split)
        if not isinstance(items, list):
            problems.append(f"split '{split}' is missing (expected a list of items)")
            continue
        if not items:
            problems.append(f"split '{split}' is empty")
        for i, it in enumerate(items):
            where = f"{split}[{i}]"
            if not isinstance(it, Mapping):
                problems.append(f"{where}: item must be a dict with image, mask, label, id; got {type(it).__name__}")
                continue
            missing = [k for k in ("image", "label", "id") if k not in it]
            if missing:
                problems.append(f"{where}: missing key(s) {missing} (item keys: {sorted(it)})")
            item_id = it.get("id")
            if "id" in it:
                if not isinstance(item_id, str) or not item_id:
                    problems.append(f"{where}: id must be a non-empty str, got {item_id!r}")
                elif item_id in seen_ids:
                    problems.append(f"{where}: duplicate id '{item_id}' (also {seen_ids[item_id]})")
                else:
                    seen_ids[item_id] = where
                where = f"{where} (id {item_id!r})"
            label = it.get("label")
            label_ok = isinstance(label, (int, np.integer)) and not isinstance(label, bool)
            if "label" in it:
                if not label_ok:
                    problems.append(f"{where}: label must be an int, got {label!r}")
                elif num_classes is not None and not 0 <= label < num_classes:
                    problems.append(f"{where}: label {label} outside range({num_classes}) of classes {classes}")
            mask = it.get("mask")
            if mask is not None and not _is_path(mask):
                problems.append(f"{where}: mask must be a file path or null, got {mask!r}")
                mask = None
            if split in ("valpx", "test") and mask is None and not (label_ok and label in negative):
                problems.append(
                    f"{where}: {split} items need a mask "
                    f"(only labels in negative_classes {sorted(negative)} may omit it)"
                )
            image = it.get("image")
            if "image" in it:
                if not _is_path(image):
                    problems.append(f"{where}: image must be a file path, got {image!r}")
                    continue
                key = os.path.abspath(image)
                if key in seen_images:
                    problems.append(f"{where}: image {image} is listed twice (also {seen_images[key]})")
                else:
                    seen_images[key] = where
                checkable.append((where, i, {"image": str(image), "mask": str(mask) if mask is not None else None}))
    if num_classes is not None and not problems:  # coverage of well-formed items only: one cause, one line
        problems += _coverage_problems(datalist, splits, classes, negative)
    return problems, checkable


def _coverage_problems(datalist: Mapping, splits: Sequence[str], classes: list[str], negative: set) -> list[str]:
    """Class coverage that a run needs, checked before it starts instead of failing at its end: ``train`` holds
    every class (the classifier learns them all); ``valpx`` and ``test`` each hold an image of a class with a
    region of interest (the threshold and PxAP are undefined otherwise). A ``test`` without some class is
    allowed: that class's figures are reported as absent."""
    problems = []
    for split in splits:
        items = datalist.get(split)
        if not isinstance(items, list) or not items:
            continue  # reported above
        present = {it.get("label") for it in items if isinstance(it, Mapping)}
        if split == "train":
            missing = [c for k, c in enumerate(classes) if k not in present]
            if missing:
                problems.append(f"train has no image of class(es) {missing}: the classifier cannot learn them")
        elif split in ("valpx", "test") and not any(k in present and k not in negative for k in range(len(classes))):
            positives = [c for k, c in enumerate(classes) if k not in negative]
            problems.append(
                f"{split} has no image of a class with a region of interest ({positives}): "
                f"{'the threshold' if split == 'valpx' else 'PxAP'} cannot be measured"
            )
    return problems


def validate_datalist(
    datalist: Mapping | str | os.PathLike,
    splits: Sequence[str] = SPLITS,
    check_masks: bool = True,
    *,
    num_workers: int | None = None,
) -> None:
    """Check a datalist and the files it names; raise one error listing every problem.

    Args:
        datalist: a datalist dict (paths absolute or relative to the working directory), or the path of
            a datalist JSON (read with :func:`~monai_pixelcam.data.datalist.load_datalist`).
        splits: the splits to check (each must exist and be non-empty).
        check_masks: decode mask files (size and plausibility). With False, masks are not opened,
            but the rule that valpx/test items need masks still applies.
        num_workers: threads decoding files (PIL decoders release the GIL); default ``min(8, cpus + 2)``.

    Raises:
        DatalistError: with ``.problems``, one line per problem (see the module docstring).
    """
    if isinstance(datalist, (str, os.PathLike)):
        datalist = load_datalist(datalist)
    if not isinstance(datalist, Mapping):
        raise DatalistError(
            f"a datalist must be a dict with 'classes' and the splits {SPLITS}, got {type(datalist).__name__}"
        )
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    problems, checkable = _structure_problems(datalist, splits)

    image_paths = sorted({it["image"] for _, _, it in checkable})
    mask_paths = sorted({it["mask"] for _, _, it in checkable if it["mask"]}) if check_masks else []
    workers = num_workers or min(8, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        image_results = dict(zip(image_paths, pool.map(_check_image, image_paths)))
        mask_results = dict(zip(mask_paths, pool.map(_check_mask, mask_paths)))

    for where, _, it in checkable:
        size, error = image_results[it["image"]]
        if error:
            problems.append(f"{where}: image {error}")
        if not it["mask"] or not check_masks:
            continue
        mask_size, mask_error = mask_results[it["mask"]]
        if mask_error:
            problems.append(f"{where}: mask {mask_error}")
        elif size is not None and mask_size != size:
            problems.append(
                f"{where}: mask {it['mask']} is {mask_size[0]}x{mask_size[1]} (H x W) but image {it['image']} "
                f"is {size[0]}x{size[1]}"
            )
    if problems:
        raise DatalistError(problems)


def save_validated_datalist(datalist: Mapping, out_json: str | os.PathLike, validate: bool = True) -> Path:
    """Validate ``datalist`` (all splits, masks included) unless ``validate`` is False, then save it atomically.

    Nothing is written when validation fails, so a converter never leaves a broken datalist behind.
    """
    if validate:
        validate_datalist(datalist)
    return save_datalist(dict(datalist), out_json)


def print_problems(source: str | os.PathLike, error: DatalistError) -> int:
    """Command-line report of a :class:`DatalistError` on stderr, one problem a line; returns exit status 1."""
    print(f"{source}: {len(error.problems)} problem(s):", file=sys.stderr)
    for line in error.problems:
        print(f"  {line}", file=sys.stderr)
    return 1


def converter_main(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    src_help: str,
    convert,
    fractions: Sequence[tuple[str, float]],
) -> int:
    """The command line shared by the dataset converters: ``--src --out --seed``, one ``--<name>`` option per
    ``(name, default)`` of ``fractions`` (passed to ``convert`` as a keyword), ``--valpx-per-class`` and
    ``--no-validate``; problems are listed on stderr with exit status 1."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--src", required=True, type=Path, help=src_help)
    parser.add_argument("--out", required=True, type=Path, help="datalist JSON to write")
    parser.add_argument("--seed", type=int, default=0)
    for name, default in fractions:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=default)
    parser.add_argument("--valpx-per-class", type=int, default=3)
    parser.add_argument("--no-validate", action="store_true", help="skip decoding every file before writing")
    args = parser.parse_args(argv)
    try:
        out = convert(
            args.src,
            args.out,
            seed=args.seed,
            valpx_per_class=args.valpx_per_class,
            validate=not args.no_validate,
            **{name: getattr(args, name) for name, _ in fractions},
        )
    except DatalistError as e:
        return print_problems(args.src, e)
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_pixelcam.data.validate",
        description="Check a datalist JSON and every image and mask it names; list all problems.",
    )
    parser.add_argument("datalist", type=Path, help="datalist JSON file")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="splits to check")
    parser.add_argument("--no-masks", action="store_true", help="do not open mask files")
    args = parser.parse_args(argv)
    try:
        data = load_datalist(args.datalist)
        validate_datalist(data, splits=args.splits, check_masks=not args.no_masks)
    except DatalistError as e:
        return print_problems(args.datalist, e)
    counts = ", ".join(f"{s} {len(data[s])}" for s in args.splits)
    print(f"{args.datalist}: OK ({counts} items; classes {data['classes']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
