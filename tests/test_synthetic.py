"""Embedded synthetic datasets: datalist, files, determinism, stain shift, no shortcut, CLI, preview."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_pixelcam.data import SPLITS, datalist_mpp, load_datalist, synthesize, validate_datalist
from monai_pixelcam.data.synthetic import KINDS, main, measure_shortcut, render_tile

SIZE = 64  # small tiles keep the file fast; structures scale with the size


def _ids(datalist, split):
    return [it["id"] for it in datalist[split]]


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def glas_default(tmp_path_factory):
    """The default GlaS-like set (165 images) at a tiny size: split sizes are those of the real benchmark."""
    out = tmp_path_factory.mktemp("glas")
    return out, load_datalist(synthesize("glas", out, image_size=32, seed=0, progress=False))


@pytest.fixture(scope="module")
def camelyon_small(tmp_path_factory):
    out = tmp_path_factory.mktemp("camelyon")
    return out, load_datalist(synthesize("camelyon", out, n_images=40, image_size=SIZE, seed=3, progress=False))


def test_glas_default_splits(glas_default):
    out, dl = glas_default
    assert dl["classes"] == ["benign", "malignant"] and dl["negative_classes"] == []
    # nominal scale: 1.86 um/px at 256 px (GlaS downsampled 3x), same field of view at 32 px
    assert dl["mpp"] == datalist_mpp(dl) == 1.86 * 256 / 32
    sizes = {s: len(dl[s]) for s in SPLITS}
    assert sum(sizes.values()) == 165 and sizes["test"] == 80
    non_test = 165 - 80
    assert 0.15 <= (sizes["valcl"] + sizes["valpx"]) / non_test <= 0.25  # about 80/20 train/validation
    assert Counter(it["label"] for it in dl["valpx"]) == {0: 3, 1: 3}
    for split in SPLITS:
        counts = Counter(it["label"] for it in dl[split])
        assert set(counts) == {0, 1}, split
        assert abs(counts[0] - counts[1]) <= 2, (split, counts)  # stratified, balanced classes
    all_ids = [i for s in SPLITS for i in _ids(dl, s)]
    assert len(all_ids) == len(set(all_ids)) == 165  # no overlap
    validate_datalist(dl)  # every image and mask readable, binary masks of image size
    assert (out / "preview.png").is_file()


def test_camelyon_datalist_and_masks(camelyon_small):
    out, dl = camelyon_small
    assert dl["classes"] == ["normal", "tumor"] and dl["negative_classes"] == [0]
    assert dl["mpp"] == datalist_mpp(dl) == pytest.approx(0.972 * 256 / SIZE)  # CAMELYON16 level 2 at 256 px
    items = [it for s in SPLITS for it in dl[s]]
    assert len(items) == 40 and Counter(it["label"] for it in items) == {0: 20, 1: 20}
    assert abs(len(dl["test"]) - 12) <= 2  # about 30 % test
    assert len({it["id"] for it in items}) == 40
    validate_datalist(dl)
    for it in items:
        img = Image.open(it["image"])
        mask = Image.open(it["mask"])
        assert img.mode == "RGB" and img.size == (SIZE, SIZE)
        assert mask.mode == "L" and mask.size == (SIZE, SIZE)
        m = np.asarray(mask)
        assert set(np.unique(m)) <= {0, 255}
        # normal patches hold no region of interest, tumour patches always do
        assert (m.max() == 255) == (it["label"] == 1), it["id"]
    assert all(it["mask"] for it in dl["valpx"]) and Counter(it["label"] for it in dl["valpx"]) == {0: 3, 1: 3}


def test_glas_images_and_masks():
    for label in (0, 1):
        img, mask = render_tile("glas", label, 96, seed=5, index=label)
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        assert mask.shape == (96, 96) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
        assert 0.05 < mask.mean() < 0.8  # glands in both classes, as in GlaS
        # H&E-like: stroma is pink (green absorbed most), nuclei purple-dark, lumen near white
        outside = img[mask == 0].astype(float).mean(0)
        assert outside[1] < outside[0] - 20 and outside[1] < outside[2] - 20, outside


def test_deterministic_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, seed in ((a, 11), (b, 11), (c, 12)):
        synthesize("glas", folder, n_images=16, image_size=48, seed=seed, progress=False)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert da == db and len(da) == 2 * 16 + 2  # images, masks, datalist.json, preview.png
    assert da["images/glas_0000.png"] != dc["images/glas_0000.png"]


def test_stain_shift_keeps_tissue(tmp_path):
    """Same seed, shifted stain: same labels, splits and masks (same tissue), different colours."""
    shift = {"h_scale": 1.3, "e_scale": 0.8, "hue_shift": 0.05}
    base = load_datalist(synthesize("camelyon", tmp_path / "base", n_images=12, image_size=48, seed=2, progress=False))
    moved = load_datalist(
        synthesize("camelyon", tmp_path / "shift", n_images=12, image_size=48, seed=2, progress=False, stain=shift)
    )
    for split in SPLITS:
        assert [(i["id"], i["label"]) for i in base[split]] == [(i["id"], i["label"]) for i in moved[split]]
    for it0, it1 in zip(base["test"] + base["train"], moved["test"] + moved["train"]):
        assert Path(it0["mask"]).read_bytes() == Path(it1["mask"]).read_bytes()
        x0 = np.asarray(Image.open(it0["image"]), float)
        x1 = np.asarray(Image.open(it1["image"]), float)
        assert np.abs(x0 - x1).mean() > 3.0
    # more hematoxylin and less eosin: the image gets bluer relative to green-absorbing eosin
    img0, _ = render_tile("glas", 0, 64, seed=0, index=0)
    img1, _ = render_tile("glas", 0, 64, seed=0, index=0, stain={"h_scale": 1.5, "e_scale": 0.6})
    od0, od1 = -np.log((img0 + 1.0) / 256), -np.log((img1 + 1.0) / 256)
    assert od1[..., 0].mean() > od0[..., 0].mean() and od1[..., 1].mean() < od0[..., 1].mean()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_shortcut_outside_the_mask(kind):
    """Colour outside the (undilated) mask says nothing about the class; inside it says a lot."""
    acc = measure_shortcut(kind, n_images=100, image_size=96, seed=0)
    assert acc["outside"] < 0.65, acc
    assert acc["inside"] > 0.8, acc
    if kind == "glas":
        # gland area fractions overlap between classes: the amount of stroma does not give the class away
        assert acc["mask_area"] < 0.65, acc


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic kind"):
        synthesize("warwick", tmp_path)
    with pytest.raises(ValueError, match="n_images >= 15"):
        synthesize("glas", tmp_path, n_images=6, progress=False)
    with pytest.raises(ValueError, match="unknown stain keys"):
        render_tile("glas", 0, 64, stain={"gamma": 2})
    with pytest.raises(ValueError, match="h_scale"):
        render_tile("glas", 0, 64, stain={"h_scale": 0})
    with pytest.raises(ValueError, match="label 2"):
        render_tile("camelyon", 2, 64)
    assert not any(tmp_path.iterdir())  # failed before writing anything


def test_cli_writes_dataset_and_preview(tmp_path):
    """One real subprocess (``python -m``, progress bar on stderr); the error path runs in-process."""
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "monai_pixelcam.data.synthetic", "--kind", "glas", "--out", str(out),
         "--n", "20", "--size", "48", "--seed", "4"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("datalist.json")
    assert "synthesize glas" in proc.stderr  # the progress bar
    data = json.loads((out / "datalist.json").read_text())
    assert sum(len(data[s]) for s in SPLITS) == 20
    assert len(list((out / "images").glob("*.png"))) == 20 == len(list((out / "masks").glob("*.png")))
    preview = Image.open(out / "preview.png")
    assert preview.mode == "RGB" and preview.size[0] > preview.size[1] > 100


def test_cli_rejects_too_few_images(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--kind", "glas", "--out", str(tmp_path / "x"), "--n", "3"])
    assert exit_info.value.code == 2
    assert "n_images >= 15" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("tissue, classes, negatives", [("liver", ["normal", "tumour"], [0]),
                                                       ("breast", ["benign", "carcinoma"], [])])
def test_unseen_tissue_generator_writes_a_valid_datalist(tmp_path, tissue, classes, negatives):
    """benchmarks/unseen_tissue.py (other tissue models, for checking the defaults on data they were never
    chosen on): a valid datalist, both classes in every split, a mask on every image of a class with a region
    of interest and each covering part of its tile, images of a negative class without a mask."""
    from conftest import load_benchmark

    from monai_pixelcam.data import load_datalist, validate_datalist
    from monai_pixelcam.data.io import read_mask

    module = load_benchmark("unseen_tissue")
    path = module.generate(tmp_path, seed=1, size=64, sizes={"train": 4, "valcl": 2, "valpx": 2, "test": 2},
                           tissue=tissue)  # fmt: skip
    validate_datalist(path)
    data = load_datalist(path)
    assert data["classes"] == classes and data["negative_classes"] == negatives
    for split in ("train", "valcl", "valpx", "test"):
        assert sorted(it["label"] for it in data[split]) == sorted([0, 1] * (len(data[split]) // 2))
        for it in data[split]:
            assert (it["mask"] is None) == (it["label"] in negatives)
            if it["mask"]:
                fraction = read_mask(it["mask"]).mean()
                assert 0.05 < fraction < 0.8, fraction


def test_unseen_tissue_generator_names_an_unknown_tissue(tmp_path):
    from conftest import load_benchmark

    with pytest.raises(ValueError, match=r"tissue 'kidney': not one of \['breast', 'liver'\]"):
        load_benchmark("unseen_tissue").generate(tmp_path, tissue="kidney")
    assert not any(tmp_path.iterdir())
