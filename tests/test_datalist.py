"""make_splits: stratified, seeded, disjoint; valpx drawn from the validation images; valcl never empty."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from monai_pixelcam.data import SPLITS, DatalistError, make_splits


def make_items(n_per_class: dict[int, int], masked: int | None = None, prefix: str = "img") -> list[dict]:
    """Items per label; the first ``masked`` of each class have a mask (all when None)."""
    return [
        {"image": f"{prefix}_{c}_{i}.png", "mask": f"{prefix}_{c}_{i}_mask.png" if masked is None or i < masked else None,
         "label": c, "id": f"{prefix}_{c}_{i:03d}"}
        for c, n in n_per_class.items()
        for i in range(n)
    ]


def ids(splits: dict) -> dict[str, set[str]]:
    return {s: {it["id"] for it in splits[s]} for s in SPLITS}


def labels(items) -> Counter:
    return Counter(it["label"] for it in items)


def test_stratified_disjoint_and_complete():
    items = make_items({0: 30, 1: 20, 2: 10})
    splits = make_splits(items, test_fraction=0.3, valcl_fraction=0.25, valpx_per_class=2, seed=0)
    by_split = ids(splits)
    assert sum(len(v) for v in by_split.values()) == 60 and set().union(*by_split.values()) == {it["id"] for it in items}
    # per class: round(0.3 n) test, then round(0.25 of the rest) validation of which 2 valpx
    assert labels(splits["test"]) == {0: 9, 1: 6, 2: 3}
    assert labels(splits["valpx"]) == {0: 2, 1: 2, 2: 2}
    assert labels(splits["valcl"]) == {0: 3, 1: 2, 2: 1}  # class 2: round(0.25 * 7) = 2, raised to valpx + 1
    assert labels(splits["train"]) == {0: 21 - 5, 1: 14 - 4, 2: 7 - 3}


def test_seeded_and_independent_of_input_order():
    items = make_items({0: 25, 1: 25})
    a = make_splits(items, test_fraction=0.2, seed=3)
    shuffled = list(items)
    random.Random(1).shuffle(shuffled)
    assert make_splits(shuffled, test_fraction=0.2, seed=3) == a
    assert ids(make_splits(items, test_fraction=0.2, seed=4)) != ids(a)


@pytest.mark.parametrize("masked", [30, 6])
def test_valpx_is_drawn_from_the_validation_images(masked):
    items = make_items({0: 40, 1: 40}, masked=masked)
    reference = make_splits(items, test_fraction=0.25, valcl_fraction=0.3, valpx_per_class=0, seed=1)
    validation = ids(reference)["valcl"]
    masked_in_validation = labels(it for it in reference["valcl"] if it["mask"])
    for k in (1, 3, 5):
        splits = make_splits(items, test_fraction=0.25, valcl_fraction=0.3, valpx_per_class=k, seed=1)
        # train and test do not move: valpx images come out of the validation split only, even when it
        # holds fewer than k masked images (6 masked of 40: about 1 of the 9 validation images per class)
        assert ids(splits)["train"] == ids(reference)["train"] and ids(splits)["test"] == ids(reference)["test"]
        assert ids(splits)["valpx"] | ids(splits)["valcl"] == validation
        assert labels(splits["valpx"]) == {c: min(k, masked_in_validation[c]) for c in (0, 1)}
        assert all(it["mask"] for it in splits["valpx"])
    if masked == 6:
        assert max(masked_in_validation.values()) < 5  # the case above where valpx is short


def test_valpx_needs_a_mask_unless_the_class_is_negative():
    items = make_items({0: 20, 1: 20}, masked=0)  # no masks at all
    items += make_items({1: 10}, prefix="masked")  # ten label-1 items with masks
    splits = make_splits(items, valcl_fraction=0.5, valpx_per_class=3, seed=0, negative_classes=[0])
    valpx = splits["valpx"]
    assert labels(valpx) == {0: 3, 1: 3}
    assert all(it["mask"] is None for it in valpx if it["label"] == 0)  # negative: an empty mask is the truth
    assert all(it["mask"] for it in valpx if it["label"] == 1)
    # without a negative class, maskless images never reach valpx (and stay in valcl)
    splits = make_splits(make_items({0: 20, 1: 20}, masked=0), valcl_fraction=0.5, valpx_per_class=3, seed=0)
    assert splits["valpx"] == [] and labels(splits["valcl"]) == {0: 10, 1: 10}


@pytest.mark.parametrize("n", [8, 9, 12])
def test_valcl_never_empty_for_small_classes(n):
    # 0.2 of 8 rounds to 2 validation images: all would go to valpx without the floor of valpx + 1
    splits = make_splits(make_items({0: n, 1: n}), valcl_fraction=0.2, valpx_per_class=3, seed=2)
    assert labels(splits["valcl"]) == {0: 1, 1: 1} and labels(splits["valpx"]) == {0: 3, 1: 3}
    assert labels(splits["train"]) == {0: n - 4, 1: n - 4}


def test_fixed_test_split():
    items, test = make_items({0: 10, 1: 10}), make_items({0: 3, 1: 2}, prefix="test")
    splits = make_splits(items, test, test_fraction=0.5, seed=0)  # test_fraction unused with a fixed test split
    assert splits["test"] == sorted(test, key=lambda it: it["id"])
    assert set().union(*(ids(splits)[s] for s in ("train", "valcl", "valpx"))) == {it["id"] for it in items}


def test_duplicate_ids_are_an_error():
    items = make_items({0: 5, 1: 5})
    with pytest.raises(DatalistError, match=r"duplicate image ids: \['img_1_002'\]"):
        make_splits([*items, dict(items[7])])
    with pytest.raises(DatalistError, match=r"duplicate image ids: \['img_0_000'\]"):
        make_splits(items, [dict(items[0])])  # an id in both the items and the fixed test split
