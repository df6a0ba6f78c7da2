"""The one on-disk dataset convention of the project: a MONAI-style datalist JSON.

A datalist is a dict::

    {
      "classes": ["benign", "malignant"],      # class names, label i -> classes[i]
      "negative_classes": [],                   # labels whose images hold no region of interest
      "mpp": 0.62,                              # optional: microns per pixel of the image files
      "train":  [{"image": str, "mask": str | None, "label": int, "id": str}, ...],
      "valcl":  [...],   # image labels only, for B-CL model selection
      "valpx":  [...],   # a few pixel-annotated images, for B-LOC selection and the threshold
      "test":   [...],
    }

Scale: the optional top-level ``"mpp"`` is the dataset's microns per pixel (of the files as stored, not
after any resize); an item may carry its own ``"mpp"``, which overrides it for that image. Both are
positive numbers (or null: unknown); :func:`load_datalist` rejects anything else, naming the file and
item. :func:`datalist_mpp` gives the scale of the training images.

Paths are stored relative to the JSON file's folder when they lie under it, and
``load_datalist`` makes them absolute again, so a dataset folder can be moved.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_json_atomic

SPLITS = ("train", "valcl", "valpx", "test")

__all__ = ["SPLITS", "DatalistError", "make_splits", "save_datalist", "load_datalist", "mpp_problems", "datalist_mpp"]

#: Relative difference under which two items' microns per pixel count as one scale (scanner metadata of one
#: objective differs in the third digit, e.g. 0.2425 and 0.2428).
MPP_REL_TOL = 0.01


class DatalistError(ValueError):
    """A datalist, or a file it names, is unusable. The message lists every problem, one per line."""

    def __init__(self, problems: Sequence[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def make_splits(
    items: Sequence[dict],
    test_items: Sequence[dict] | None = None,
    *,
    test_fraction: float = 0.0,
    valcl_fraction: float = 0.2,
    valpx_per_class: int = 3,
    seed: int = 0,
    negative_classes: Sequence[int] = (),
) -> dict[str, list[dict]]:
    """Split items into ``train``, ``valcl``, ``valpx``, ``test``: stratified by label, deterministic from ``seed``.

    Args:
        items: dicts with at least ``label`` (int) and ``id`` (unique str); ``mask`` may be None.
        test_items: a fixed test split (e.g. GlaS testA + testB); when None, ``test_fraction`` of each
            class is drawn from ``items`` instead.
        test_fraction: in [0, 1), used only when ``test_items`` is None.
        valcl_fraction: in [0, 1], fraction of each class's non-test items that go to the validation
            images (``valcl`` plus ``valpx``); at least ``valpx_per_class + 1`` of them when the class has
            twice that many items, so that ``valcl`` never ends up empty.
        valpx_per_class: images per class moved from the validation images to ``valpx``; only images with a
            mask qualify, or any image of a ``negative_classes`` label (no mask means an empty mask). As in
            the GlaS WSOL folds, valpx images come out of the validation split.
        seed: the split depends on nothing else (input order is normalised by ``id``).
        negative_classes: labels whose images hold no region of interest (e.g. CAMELYON ``normal``).

    Returns:
        dict split name -> list of items; no id appears in two splits.
    """
    ids = [it["id"] for it in items] + [it["id"] for it in (test_items or [])]
    dup = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dup:
        raise DatalistError(f"duplicate image ids: {dup[:10]}")
    # not monai.data.partition_dataset_classes: valpx takes only masked images (or a negative class's) out of
    # the validation share, and every class must keep a valcl image
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[dict]] = defaultdict(list)
    for it in sorted(items, key=lambda d: d["id"]):
        by_class[int(it["label"])].append(it)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    if test_items is not None:
        out["test"] = sorted(test_items, key=lambda d: d["id"])
    for label in sorted(by_class):
        group = [by_class[label][i] for i in rng.permutation(len(by_class[label]))]
        if test_items is None and test_fraction > 0:
            n_test = int(round(test_fraction * len(group)))
            out["test"].extend(group[:n_test])
            group = group[n_test:]
        n_val = max(int(round(valcl_fraction * len(group))), min(valpx_per_class + 1, len(group) // 2))
        val, train = group[:n_val], group[n_val:]
        with_mask = [it for it in val if it.get("mask") or label in negative_classes]
        px = with_mask[:valpx_per_class]
        px_ids = {it["id"] for it in px}
        out["valpx"].extend(px)
        out["valcl"].extend(it for it in val if it["id"] not in px_ids)
        out["train"].extend(train)
    return out


def _rel(path: str | None, base: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return str(p)


def save_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write ``datalist`` to ``path`` atomically (temporary name, then rename); paths under its folder become relative."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.resolve()
    out = {k: v for k, v in datalist.items() if k not in SPLITS}
    for split in SPLITS:
        out[split] = [
            {**it, "image": _rel(it["image"], base), "mask": _rel(it.get("mask"), base)}
            for it in datalist.get(split, [])
        ]
    return write_json_atomic(out, path)


def load_datalist(path: str | os.PathLike, splits: Sequence[str] = SPLITS) -> dict:
    """Read a datalist JSON written by ``save_datalist`` (or by hand); relative paths resolve against its folder.

    Args:
        splits: the splits the file must hold (training needs all four; evaluating a trained model needs
            ``test`` only). The other splits, when absent, are empty lists.

    Raises:
        DatalistError: the file is missing, is not JSON, or lacks ``classes`` or a required split.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatalistError(f"{path}: datalist file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatalistError(f"{path}: not a valid JSON datalist ({e})") from None
    problems = []
    if not isinstance(data, dict):
        raise DatalistError(f"{path}: a datalist must be a JSON object with 'classes' and the splits {SPLITS}")
    problems += [f"{path}: {p}" for p in mpp_problems(data)]
    if not isinstance(data.get("classes"), list) or not data["classes"]:
        problems.append(f"{path}: missing or empty 'classes' list")
    for split in SPLITS:
        if split in splits and not isinstance(data.get(split), list):
            problems.append(f"{path}: missing split '{split}' (a list of items)")
        elif data.get(split) is not None and not isinstance(data[split], list):
            problems.append(f"{path}: split '{split}' must be a list of items")
    if problems:
        raise DatalistError(problems)
    base = path.parent.resolve()
    data.setdefault("negative_classes", [])
    for split in SPLITS:
        data.setdefault(split, [])
        for it in data[split]:
            if not isinstance(it, dict):
                continue  # validate_datalist reports malformed items with their split and index
            for key in ("image", "mask"):
                if isinstance(it.get(key), str) and it[key] and not os.path.isabs(it[key]):
                    it[key] = str((base / it[key]).resolve())
            it.setdefault("mask", None)
    return data


def _is_mpp(value) -> bool:
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def mpp_problems(datalist: dict) -> list[str]:
    """Why the datalist's ``"mpp"`` entries are unusable: one line per bad value (top level, or split, index and
    id of the item); empty when every one is a positive finite number or null."""
    problems = []
    if not _is_mpp(datalist.get("mpp")):
        problems.append(f"'mpp' must be a positive number of microns per pixel (or null), got {datalist['mpp']!r}")
    for split in SPLITS:
        items = datalist.get(split)
        for i, it in enumerate(items if isinstance(items, list) else []):
            if isinstance(it, dict) and not _is_mpp(it.get("mpp")):
                problems.append(
                    f"{split}[{i}] (id {it.get('id')!r}): 'mpp' must be a positive number of microns per pixel "
                    f"(or null), got {it['mpp']!r}"
                )
    return problems


def datalist_mpp(datalist: dict, split: str = "train") -> float | None:
    """Microns per pixel of the image files of ``split`` (the training images by default).

    Each item's scale is its own ``"mpp"``, else the datalist's. All items at one scale (within
    :data:`MPP_REL_TOL`, relative) give the median of their values; no scale anywhere gives None (unknown).

    Raises:
        DatalistError: a bad value (see :func:`mpp_problems`); some items have a scale and others none; or the
            items disagree: a model is trained at one scale, so the message lists each scale with an item at
            it, and the images must be resampled to one scale (or the split divided) first.
    """
    problems = mpp_problems(datalist)
    if problems:
        raise DatalistError(problems)
    default = datalist.get("mpp")
    values: list[float] = []
    example: dict[float, str] = {}
    unknown: list[str] = []
    for i, it in enumerate(datalist.get(split) or []):
        value = it.get("mpp") if it.get("mpp") is not None else default
        where = f"{split}[{i}] (id {it.get('id')!r})"
        if value is None:
            unknown.append(where)
        else:
            values.append(float(value))
            example.setdefault(float(value), where)
    if not values:
        return None
    if unknown:
        raise DatalistError(
            f"{len(unknown)} {split} image(s) have no 'mpp' (e.g. {unknown[0]}) while {len(values)} do (e.g. "
            f"{next(iter(example.values()))}); give the dataset an 'mpp' or every item its own"
        )
    if max(values) > min(values) * (1 + MPP_REL_TOL):
        scales = sorted(example)
        shown = ", ".join(f"{v:g} um/px ({example[v]})" for v in scales[:5]) + (", ..." if len(scales) > 5 else "")
        raise DatalistError(
            f"the {split} images are at {len(scales)} different scales: {shown}; a model is trained at one scale, "
            "so resample the images to one mpp (or split the dataset) first"
        )
    return float(np.median(values))
