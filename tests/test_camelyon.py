"""CAMELYON16 patch converter on a tiny fake folder: patches, masks and an image,mask,label CSV."""

from __future__ import annotations

import runpy
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from monai_pixelcam.data import (
    DatalistError,
    LoadHistologyd,
    convert_camelyon,
    datalist_mpp,
    load_datalist,
    validate_datalist,
)

S = 16
SPLITS = ("train", "valcl", "valpx", "test")


def make_camelyon(root, n_normal=12, n_tumor=12, n_tumor_no_mask=2, split_of=None, label_style="mixed"):
    """patches/*.png, masks/*.png (tumor only) and patches.csv; ``split_of(kind, i)`` fills a split column."""
    (root / "patches").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["image , mask, label" + (", split" if split_of else "")]
    for kind, n in (("normal", n_normal), ("tumor", n_tumor)):
        for i in range(n):
            name = f"{kind}_{i:03d}"
            Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(root / "patches" / f"{name}.png")
            mask = ""
            if kind == "tumor" and i >= n_tumor_no_mask:
                m = np.zeros((S, S), np.uint8)
                m[3:10, 4 : 8 + i % 5] = 255
                Image.fromarray(m).save(root / "masks" / f"{name}.png")
                mask = f"masks/{name}.png"
            label = (kind if i % 2 else str(int(kind == "tumor"))) if label_style == "mixed" else kind
            line = f"patches/{name}.png,{mask},{label}"
            lines.append(line + (f",{split_of(kind, i)}" if split_of else ""))
    (root / "patches.csv").write_text("\n".join(lines) + "\n")
    return root


def _ids(dl):
    return {s: {it["id"] for it in dl[s]} for s in SPLITS}


def test_convert_camelyon_drawn_splits(tmp_path):
    src = make_camelyon(tmp_path / "cam")
    out = convert_camelyon(src, tmp_path / "cam.json", seed=0)  # folder holding one CSV
    dl = load_datalist(out)
    validate_datalist(dl)
    assert dl["classes"] == ["normal", "tumor"] and dl["negative_classes"] == [0]
    ids = _ids(dl)
    assert sum(len(v) for v in ids.values()) == 24 and len(set().union(*ids.values())) == 24  # no overlap
    labels = {it["id"]: it["label"] for s in SPLITS for it in dl[s]}
    # "0" / "1" and "normal" / "tumor" alternate in the CSV
    assert [labels[i] for i in ("normal_000", "normal_001", "tumor_000", "tumor_001")] == [0, 0, 1, 1]
    # tumor patches without a mask stay in train / valcl; valpx and test tumors have masks
    for s in ("valpx", "test"):
        assert all(it["mask"] for it in dl[s] if it["label"] == 1)
    assert {"tumor_000", "tumor_001"} <= ids["train"] | ids["valcl"]
    assert all(it["mask"] is None for s in SPLITS for it in dl[s] if it["label"] == 0)
    assert sum(it["label"] == 1 for it in dl["valpx"]) == 3
    n_test = {c: sum(it["label"] == c for it in dl["test"]) for c in (0, 1)}
    assert n_test == {0: round(0.3 * 12), 1: round(0.3 * 10)}  # of the rows that can be evaluated
    # normal patches load with an empty mask of the patch size
    normal = next(it for it in dl["test"] if it["label"] == 0)
    d = LoadHistologyd()(normal)
    assert d["mask"].shape == (1, S, S) and float(d["mask"].sum()) == 0.0
    tumor = next(it for it in dl["test"] if it["label"] == 1)
    assert float(LoadHistologyd()(tumor)["mask"].sum()) > 0

    again = convert_camelyon(src / "patches.csv", tmp_path / "again.json", seed=0)
    assert _ids(load_datalist(again)) == ids
    assert _ids(load_datalist(convert_camelyon(src, tmp_path / "s1.json", seed=1))) != ids


def test_convert_camelyon_split_column_and_absolute_paths(tmp_path):
    def split_of(kind, i):
        return "test" if i >= 9 else ("val" if i >= 6 else "TRAIN")

    src = make_camelyon(tmp_path / "cam", split_of=split_of, label_style="names")
    csv = src / "patches.csv"
    abs_line = f"{src / 'patches' / 'normal_000.png'},,normal,train"
    csv.write_text(csv.read_text().replace("patches/normal_000.png,,normal,train", abs_line))
    dl = load_datalist(convert_camelyon(csv, tmp_path / "out" / "cam.json", valpx_per_class=2))
    validate_datalist(dl)
    ids = _ids(dl)
    assert ids["test"] == {f"{k}_{i:03d}" for k in ("normal", "tumor") for i in (9, 10, 11)}
    assert ids["train"] == {f"{k}_{i:03d}" for k in ("normal", "tumor") for i in range(6)}
    # no valpx rows in the CSV: valpx drawn from 'val' (valcl) rows, 2 per class; normal patches qualify
    # without a mask file (their mask is empty), tumor patches need one
    assert ids["valcl"] | ids["valpx"] == {f"{k}_{i:03d}" for k in ("normal", "tumor") for i in (6, 7, 8)}
    assert sorted(i.split("_")[0] for i in ids["valpx"]) == ["normal", "normal", "tumor", "tumor"]
    assert all(it["mask"] for it in dl["valpx"] if it["label"] == 1)


def test_convert_camelyon_errors_listed_together(tmp_path):
    src = make_camelyon(tmp_path / "cam", split_of=lambda kind, i: "test" if i < 3 else "train")
    csv = src / "patches.csv"
    text = csv.read_text()
    text = text.replace("patches/normal_005.png,,normal,train", "patches/normal_005.png,,metastasis,train")
    text = text.replace("patches/normal_006.png", "patches/gone.png")
    text = text.replace("normal_008.png,,0,train", "normal_008.png,,0,holdout")
    csv.write_text(text)
    with pytest.raises(DatalistError) as e:
        convert_camelyon(src, tmp_path / "x.json")
    problems = e.value.problems
    text = str(e.value)
    # tumor_000 and tumor_001 (no mask) are in test; the label, the missing file, the unknown split
    assert len(problems) == 5, problems
    assert "tumor_000.png in split 'test' has no mask" in text and "tumor_001.png" in text
    assert "label 'metastasis'" in text and "gone.png not found" in text and "split 'holdout'" in text
    assert all("patches.csv, line" in p for p in problems)
    assert not (tmp_path / "x.json").exists()


def test_convert_camelyon_source_and_column_errors(tmp_path):
    with pytest.raises(DatalistError, match="not found"):
        convert_camelyon(tmp_path / "nowhere", tmp_path / "x.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no .csv"):
        convert_camelyon(tmp_path / "empty", tmp_path / "x.json")
    src = make_camelyon(tmp_path / "cam")
    (src / "other.csv").write_text("image,label\n")
    with pytest.raises(DatalistError, match="several .csv"):
        convert_camelyon(src, tmp_path / "x.json")
    (src / "other.csv").write_text("path,target\na.png,1\n")
    with pytest.raises(DatalistError, match=r"other.csv: missing column\(s\) \['image', 'label'\]"):
        convert_camelyon(src / "other.csv", tmp_path / "x.json")


def test_convert_camelyon_corrupt_patch_caught_by_validation(tmp_path):
    src = make_camelyon(tmp_path / "cam")
    data = (src / "patches" / "normal_004.png").read_bytes()
    (src / "patches" / "normal_004.png").write_bytes(data[:-30])  # truncated
    Image.fromarray(np.zeros((S, S + 2), np.uint8)).save(src / "masks" / "tumor_007.png")
    with pytest.raises(DatalistError) as e:
        convert_camelyon(src, tmp_path / "x.json")
    assert len(e.value.problems) == 2
    assert "normal_004.png" in str(e.value) and "tumor_007.png is 16x18" in str(e.value)
    out = convert_camelyon(src, tmp_path / "x.json", validate=False)  # asked not to decode: written
    assert out.exists()


def test_convert_camelyon_scale_argument_and_column(tmp_path):
    src = make_camelyon(tmp_path / "cam")
    assert "mpp" not in load_datalist(convert_camelyon(src, tmp_path / "none.json"))  # unknown unless told
    dl = load_datalist(convert_camelyon(src, tmp_path / "lvl0.json", mpp=0.243))
    assert dl["mpp"] == 0.243 and datalist_mpp(dl) == 0.243
    # a per-row column: level-1 patches (0.486) next to rows that take the dataset's level 0
    csv = src / "patches.csv"
    lines = csv.read_text().splitlines()
    rows = [line + (",0.486" if "tumor" in line else ",") for line in lines[1:]]
    csv.write_text("\n".join([lines[0] + ", mpp", *rows]) + "\n")
    dl = load_datalist(convert_camelyon(src, tmp_path / "mixed.json", mpp=0.243))
    items = {it["id"]: it for s in SPLITS for it in dl[s]}
    assert items["tumor_005"]["mpp"] == 0.486 and "mpp" not in items["normal_005"]
    with pytest.raises(DatalistError, match="different scales: 0.243 um/px .*, 0.486 um/px"):
        datalist_mpp(dl)
    # a cell that is not a number, and one that is not positive, are named with their line and item
    csv.write_text(csv.read_text().replace("tumor_003.png,tumor,0.486", "tumor_003.png,tumor,x").replace(
        "tumor_004.png,1,0.486", "tumor_004.png,1,-2"))
    with pytest.raises(DatalistError) as e:
        convert_camelyon(src, tmp_path / "bad.json")
    assert len(e.value.problems) == 1 and "line 17: mpp 'x' is not a number" in e.value.problems[0]
    csv.write_text(csv.read_text().replace("tumor_003.png,tumor,x", "tumor_003.png,tumor,0.486"))
    with pytest.raises(DatalistError) as e:
        convert_camelyon(src, tmp_path / "bad.json")
    assert len(e.value.problems) == 1 and "(id 'tumor_004'): 'mpp' must be a positive number" in e.value.problems[0]
    assert not (tmp_path / "bad.json").exists()

def test_camelyon_cli(tmp_path, monkeypatch, capsys):
    src = make_camelyon(tmp_path / "cam")
    out = tmp_path / "cli.json"
    monkeypatch.setattr(sys, "argv", ["camelyon", "--src", str(src), "--out", str(out), "--test-fraction", "0.25"])
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("monai_pixelcam.data.camelyon", run_name="__main__")
    assert e.value.code == 0 and len(load_datalist(out)["test"]) == 3 + round(0.25 * 10)

    from monai_pixelcam.data.camelyon import main

    assert main(["--src", str(tmp_path / "none"), "--out", str(tmp_path / "y.json")]) == 1
    assert "none" in capsys.readouterr().err
