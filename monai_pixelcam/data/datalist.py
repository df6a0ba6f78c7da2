"""The one on-disk dataset convention of the project: a MONAI-style datalist JSON.

A datalist is a dict::

    {
      "classes": ["benign", "malignant"],      # class names, label i -> classes[i]
      "negative_classes": [],                   # labels whose images hold no region of interest
      "train":  [{"image": str, "mask": str | None, "label": int, "id": str}, ...],
      "valcl":  [...],   # image labels only, for B-CL model selection
      "valpx":  [...],   # a few pixel-annotated images, for B-LOC selection and the threshold
      "test":   [...],
    }

Paths are stored relative to the JSON file's folder when they lie under it, and
``load_datalist`` makes them absolute again, so a dataset folder can be moved.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import write_json_atomic

SPLITS = ("train", "valcl", "valpx", "test")

__all__ = ["SPLITS", "DatalistError", "make_splits", "save_datalist", "load_datalist"]


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


def load_datalist(path: str | os.PathLike) -> dict:
    """Read a datalist JSON written by ``save_datalist`` (or by hand); relative paths resolve against its folder.

    Raises:
        DatalistError: the file is missing, is not JSON, or lacks ``classes`` or a split.
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
    if not isinstance(data.get("classes"), list) or not data["classes"]:
        problems.append(f"{path}: missing or empty 'classes' list")
    for split in SPLITS:
        if not isinstance(data.get(split), list):
            problems.append(f"{path}: missing split '{split}' (a list of items)")
    if problems:
        raise DatalistError(problems)
    base = path.parent.resolve()
    data.setdefault("negative_classes", [])
    for split in SPLITS:
        for it in data[split]:
            if not isinstance(it, dict):
                continue  # validate_datalist reports malformed items with their split and index
            for key in ("image", "mask"):
                if isinstance(it.get(key), str) and it[key] and not os.path.isabs(it[key]):
                    it[key] = str((base / it[key]).resolve())
            it.setdefault("mask", None)
    return data
