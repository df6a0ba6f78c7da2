"""GlaS converter on a tiny fake folder in the original Warwick-QU layout."""

from __future__ import annotations

import json
import runpy
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from monai_pixelcam.data import (
    DatalistError,
    LoadHistologyd,
    convert_glas,
    datalist_mpp,
    load_datalist,
    validate_datalist,
)

H, W = 16, 24
N_TRAIN = {"benign": 20, "malignant": 20}  # enough per class for valcl to keep images after valpx (3)
N_TEST = {"testA": 4, "testB": 2}


def _anno(i: int) -> np.ndarray:
    """Gland instance ids: 0 background, 1..k glands (as in the real _anno.bmp files)."""
    a = np.zeros((H, W), np.uint8)
    a[2:6, 2:8] = 1
    a[9:14, 4:10] = 2
    if i % 2:
        a[3:12, 14:21] = 3
    return a


def make_glas(root, drop_anno=None, bad_grade=None, header_spaces=True):
    """Write train_N / testA_N / testB_N .bmp + _anno.bmp and a Grade.csv with the release's stray spaces."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    names = [(f"train_{i + 1}", g) for g in N_TRAIN for i in range(N_TRAIN[g])]
    names = [(f"train_{k + 1}", g) for k, (_, g) in enumerate(names)]
    for part, n in N_TEST.items():
        names += [(f"{part}_{i + 1}", "benign" if i % 2 else "malignant") for i in range(n)]
    for k, (name, grade) in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / f"{name}.bmp")
        if name != drop_anno:
            Image.fromarray(_anno(k)).save(root / f"{name}_anno.bmp")
        g = "lymphoma" if name == bad_grade else grade
        rows.append(f"{name},{k // 3 + 1}, {g}, {'healthy' if g == 'benign' else 'adenocarcinomatous'}")
    header = "name, Patient ID, grade (GlaS), grade (Sirinukunwattana et al. 2015)" if header_spaces else (
        "name,Patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)"
    )
    (root / "Grade.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root


def test_convert_glas_layout_splits_and_masks(tmp_path):
    src = make_glas(tmp_path / "Warwick QU Dataset (Released 2016_07_08)")
    out = convert_glas(src, tmp_path / "glas.json", seed=0)
    dl = load_datalist(out)
    validate_datalist(dl)
    assert dl["classes"] == ["benign", "malignant"] and dl["negative_classes"] == []
    assert dl["mpp"] == 0.62 and datalist_mpp(dl) == 0.62  # the released images' scale (20x equivalent)
    ids = {s: [it["id"] for it in dl[s]] for s in ("train", "valcl", "valpx", "test")}
    all_ids = sum(ids.values(), [])
    assert len(all_ids) == len(set(all_ids)) == sum(N_TRAIN.values()) + sum(N_TEST.values())  # no overlap
    assert sorted(ids["test"]) == sorted(f"{p}_{i + 1}" for p, n in N_TEST.items() for i in range(n))
    assert all(i.startswith("train_") for s in ("train", "valcl", "valpx") for i in ids[s])
    assert [it["label"] for it in dl["valpx"]].count(0) == 3 and [it["label"] for it in dl["valpx"]].count(1) == 3
    assert len(dl["valcl"]) > 0
    # labels from the stripped 'grade (GlaS)' column: train_1..20 benign, train_21..40 malignant
    for it in dl["train"] + dl["valcl"] + dl["valpx"]:
        assert it["label"] == (int(it["id"].split("_")[1]) > N_TRAIN["benign"])
    # masks point at the original instance-id annotations; id > 0 is foreground
    it = dl["test"][0]
    assert it["mask"].endswith(f"{it['id']}_anno.bmp")
    d = LoadHistologyd()(it)
    assert d["image"].shape == (3, H, W) and d["mask"].shape == (1, H, W)
    raw = np.asarray(Image.open(it["mask"]))
    assert raw.max() >= 2  # real instance ids, not a 0/1 mask
    np.testing.assert_array_equal(d["mask"][0].numpy(), raw > 0)
    # paths under the JSON's folder are stored relative, so the folder can move
    stored = json.loads(out.read_text())
    assert not stored["train"][0]["image"].startswith("/")


def test_convert_glas_is_deterministic_and_seeded(tmp_path):
    src = make_glas(tmp_path / "glas", header_spaces=False)
    a = convert_glas(src, tmp_path / "a.json", seed=1).read_text()
    b = convert_glas(src, tmp_path / "b.json", seed=1).read_text()
    c = convert_glas(src, tmp_path / "c.json", seed=2).read_text()
    assert a == b and a != c


def test_convert_glas_finds_grade_csv_in_only_subfolder(tmp_path):
    make_glas(tmp_path / "download" / "Warwick QU Dataset")
    dl = load_datalist(convert_glas(tmp_path / "download", tmp_path / "g.json", validate=False))
    assert len(dl["test"]) == sum(N_TEST.values())


def test_convert_glas_errors(tmp_path):
    with pytest.raises(DatalistError, match="empty"):
        convert_glas((tmp_path / "empty").mkdir() or tmp_path / "empty", tmp_path / "x.json")
    with pytest.raises(DatalistError, match="not found"):
        convert_glas(tmp_path / "nowhere", tmp_path / "x.json")

    src = make_glas(tmp_path / "nogrades")
    (src / "Grade.csv").unlink()
    with pytest.raises(DatalistError, match="no Grade.csv"):
        convert_glas(src, tmp_path / "x.json")

    src = make_glas(tmp_path / "bad", drop_anno="train_3", bad_grade="testA_2")
    (src / "testB_1.bmp").unlink()  # listed but absent
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "testB_9.bmp")  # present but not listed
    with pytest.raises(DatalistError) as e:
        convert_glas(src, tmp_path / "x.json")
    problems = e.value.problems
    assert len(problems) == 4, problems
    text = str(e.value)
    assert "train_3.bmp: image has no annotation" in text
    assert "unknown grade 'lymphoma' for testA_2" in text
    assert "testB_1.bmp: image listed" in text
    assert "testB_9.bmp: image not listed" in text
    assert not (tmp_path / "x.json").exists()


def test_convert_glas_validation_catches_bad_annotation(tmp_path):
    src = make_glas(tmp_path / "glas")
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(src / "train_5_anno.bmp")
    (src / "testA_1.bmp").write_bytes(b"BM" + b"\0" * 30)  # corrupt bitmap
    with pytest.raises(DatalistError) as e:
        convert_glas(src, tmp_path / "g.json")
    assert len(e.value.problems) == 2
    assert "train_5_anno.bmp" in str(e.value) and "testA_1.bmp" in str(e.value)
    assert not (tmp_path / "g.json").exists()


def test_glas_cli(tmp_path, monkeypatch, capsys):
    src = make_glas(tmp_path / "glas")
    out = tmp_path / "cli.json"
    monkeypatch.setattr(sys, "argv", ["glas", "--src", str(src), "--out", str(out), "--seed", "3"])
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        runpy.run_module("monai_pixelcam.data.glas", run_name="__main__")
    assert e.value.code == 0 and out.exists()
    assert out.read_text() == convert_glas(src, tmp_path / "api.json", seed=3).read_text()

    from monai_pixelcam.data.glas import main

    (src / "Grade.csv").unlink()
    assert main(["--src", str(src), "--out", str(tmp_path / "y.json")]) == 1
    assert "Grade.csv" in capsys.readouterr().err
