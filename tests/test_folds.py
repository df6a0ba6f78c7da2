"""The published WSOL folds on small fake dataset roots laid out like the real releases, with fold files in the
published format: exact membership, the release folder's spaces, every mismatch reported, the bundle's ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_pixelcam.data import DatalistError, load_datalist, prepare_datalist
from monai_pixelcam.data.folds import convert_folds, fold_datalist, main

GLAS_RELEASE = "Warwick QU Dataset (Released 2016_07_08)"  # the fold ids spell it with underscores
SPLIT_OF = {"train": range(0, 8), "valcl": range(8, 10), "valpx": range(10, 12), "test": range(12, 16)}


def _image(path: Path, h: int, w: int, seed: int, mask: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if mask:
        m = np.zeros((h, w), np.uint8)
        m[h // 4 : h // 2, w // 4 : w // 2] = 1  # a gland's instance id
        Image.fromarray(m).save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _write_fold(split_dir: Path, rows: list[tuple[str, int, str, int, int]]) -> None:
    """rows: (image id path, label, mask path or "", width, height), in the published formats."""
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "image_ids.txt").write_text("".join(f"{r[0]}\n" for r in rows))
    (split_dir / "class_labels.txt").write_text("".join(f"{r[0]},{r[1]}\n" for r in rows))
    (split_dir / "localization.txt").write_text("".join(f"{r[0]},{r[2]},\n" for r in rows))
    (split_dir / "image_sizes.txt").write_text("".join(f"{r[0]},{r[3]},{r[4]}\n" for r in rows))


@pytest.fixture()
def glas(tmp_path) -> tuple[Path, Path, dict[str, list[str]]]:
    """A GlaS root (release folder with spaces, train_N.bmp and train_N_anno.bmp, 40 x 32) and its fold-0 files."""
    root, folds = tmp_path / "GlaS", tmp_path / "folds" / "wsol-done-right-splits"
    (folds / "GLAS").mkdir(parents=True)
    (folds / "GLAS" / "encoding.yaml").write_text("{benign: 0, malignant: 1}\n")
    members = {}
    for split, indices in SPLIT_OF.items():
        rows = []
        for k in indices:
            name = f"train_{k + 1}"
            _image(root / GLAS_RELEASE / f"{name}.bmp", 32, 40, k)
            _image(root / GLAS_RELEASE / f"{name}_anno.bmp", 32, 40, k, mask=True)
            rel = f"{GLAS_RELEASE.replace(' ', '_')}/{name}"
            rows.append((f"{rel}.bmp", k % 2, f"{rel}_anno.bmp", 40, 32))
        _write_fold(folds / "GLAS" / "fold-0" / split, rows)
        members[split] = [f"train_{k + 1}" for k in indices]
    return root, folds, members


def test_a_glas_fold_keeps_exactly_its_membership(glas, tmp_path):
    root, folds, members = glas
    for where in (folds, folds / "GLAS", folds / "GLAS" / "fold-0"):  # any level of the published tree
        data = fold_datalist("glas", root, where, 0)
        assert {s: [it["id"] for it in data[s]] for s in members} == members
    assert data["classes"] == ["benign", "malignant"] and data["negative_classes"] == [] and data["mpp"] == 0.62
    first = data["train"][0]
    assert Path(first["image"]).parent.name == GLAS_RELEASE and first["mask"].endswith("train_1_anno.bmp")
    assert [it["label"] for it in data["test"]] == [0, 1, 0, 1]
    out = convert_folds("glas", root, folds, 0, tmp_path / "fold0.json")
    assert {s: [it["id"] for it in load_datalist(out)[s]] for s in members} == members


def test_every_mismatch_is_reported_and_nothing_written(glas, tmp_path):
    root, folds, _ = glas
    test_dir = folds / "GLAS" / "fold-0" / "test"
    sizes = (test_dir / "image_sizes.txt").read_text().replace("train_13.bmp,40,32", "train_13.bmp,512,512")
    (test_dir / "image_sizes.txt").write_text(sizes)
    (root / GLAS_RELEASE / "train_14.bmp").unlink()
    labels = (test_dir / "class_labels.txt").read_text().replace("train_15.bmp,0", "train_15.bmp,7")
    (test_dir / "class_labels.txt").write_text(labels)
    out = tmp_path / "fold0.json"
    with pytest.raises(DatalistError) as error:
        convert_folds("glas", root, folds, 0, out)
    problems = error.value.problems
    assert len(problems) == 3, problems
    assert "train_13.bmp: image is 40 x 32, image_sizes.txt says 512 x 512" in problems[0]
    assert "train_14.bmp: image not found" in problems[1] and "train_15.bmp: label '7'" in problems[2]
    assert all(str(test_dir) in p for p in problems) and not out.exists()
    assert main(["--dataset", "glas", "--src", str(root), "--folds", str(folds), "--out", str(out)]) == 1
    with pytest.raises(DatalistError, match="no fold-3 folder"):
        fold_datalist("glas", root, folds, 3)


def test_camelyon512_fold_with_its_negative_class_and_empty_masks(tmp_path):
    root, folds = tmp_path / "camelyon512", tmp_path / "folds" / "CAMELYON512"
    folds.mkdir(parents=True)
    (folds / "encoding.yaml").write_text("normal: 0\nmetastatic: 1\n")
    for split, indices in SPLIT_OF.items():
        rows = []
        for k in indices:
            if k % 2:
                rel = f"metastatic-patches/training/tumor/tumor_057/Patch_{k}_x_{k}_y_{k}_w_24_h_24.png"
                mask = rel.replace("Patch_", "mask_file_Patch_")
                _image(root / rel, 24, 24, k)
                _image(root / mask, 24, 24, k, mask=True)
            else:
                rel, mask = f"normal-patches/training/normal/normal_001/Patch_{k}_w_24_h_24.png", ""
                _image(root / rel, 24, 24, k)
            rows.append((rel, k % 2, mask, 24, 24))
        _write_fold(folds / "fold-2" / split, rows)
    data = fold_datalist("camelyon", root, folds, 2)
    assert data["classes"] == ["normal", "metastatic"] and data["negative_classes"] == [0]
    assert all((it["mask"] is None) == (it["label"] == 0) for s in ("train", "test") for it in data[s])
    assert [len(data[s]) for s in ("train", "valcl", "valpx", "test")] == [8, 2, 2, 4]


def test_the_bundle_trains_on_the_fold(glas, tmp_path):
    """``--dataset glas --dataset_dir ROOT --folds DIR --fold 0``: the bundle's datalist is the fold's, written
    into the bundle root; never our own splits."""
    root, folds, members = glas
    bundle = tmp_path / "bundle"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type=None, logging_file=False, bundle_root=str(bundle),
        dataset="glas", dataset_dir=str(root), folds=str(folds), fold=0,
    )  # fmt: skip
    workflow.initialize()
    data = workflow.parser.get_parsed_content("data#datalist")
    assert {s: [it["id"] for it in data[s]] for s in members} == members
    written = bundle / "datalist_glas_fold0.json"
    assert json.loads(written.read_text())["classes"] == ["benign", "malignant"]
    assert prepare_datalist("glas", root, folds=folds, fold=0, out_dir=tmp_path / "again").endswith("fold0.json")
