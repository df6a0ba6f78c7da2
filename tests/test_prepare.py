"""prepare_datalist (synthetic data, an existing datalist, a converter folder) and check_class_names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from monai_pixelcam.atomic import write_png_atomic
from monai_pixelcam.data import (
    SPLITS,
    DatalistError,
    check_class_names,
    load_datalist,
    prepare_datalist,
    save_datalist,
)

S = 16


def _pair(folder: Path, name: str, label: int, with_mask: bool = True) -> dict:
    rng = np.random.default_rng(len(name) + label)
    write_png_atomic(folder / f"{name}.png", rng.integers(0, 256, (S, S, 3), dtype=np.uint8))
    mask = None
    if with_mask:
        m = np.zeros((S, S), np.uint8)
        m[3:9, 4:12] = 255
        write_png_atomic(folder / f"{name}_mask.png", m)
        mask = str(folder / f"{name}_mask.png")
    return {"image": str(folder / f"{name}.png"), "mask": mask, "label": label, "id": name}


def _datalist(folder: Path) -> Path:
    """A valid two-class datalist JSON with two images per split."""
    data = {"classes": ["benign", "malignant"], "negative_classes": []}
    for split in SPLITS:
        data[split] = [_pair(folder, f"{split}{i}", i % 2) for i in range(2)]
    return save_datalist(data, folder / "mine.json")


def _camelyon_folder(root: Path) -> Path:
    """patches.csv with 12 normal and 12 tumour patches (tumours with masks), as convert_camelyon reads it."""
    root.mkdir(parents=True)
    lines = ["image,mask,label"]
    for kind in ("normal", "tumor"):
        for i in range(12):
            item = _pair(root, f"{kind}_{i:02d}", int(kind == "tumor"), with_mask=kind == "tumor")
            mask = Path(item["mask"]).name if item["mask"] else ""
            lines.append(f"{Path(item['image']).name},{mask},{kind}")
    (root / "patches.csv").write_text("\n".join(lines) + "\n")
    return root


def _files(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_synthetic_dataset_generated_once(tmp_path):
    root = tmp_path / "data" / "glas"
    path = prepare_datalist("synthetic_glas", root, seed=0, image_size=32, n_images=16)
    assert path == str(root / "datalist.json")
    data = load_datalist(path)
    assert data["classes"] == ["benign", "malignant"] and sum(len(data[s]) for s in SPLITS) == 16
    assert all(Path(it["image"]).parent == root / "images" for s in SPLITS for it in data[s])
    before = _files(root)
    # a second call finds the datalist and generates nothing, whatever the generator arguments say
    assert prepare_datalist("synthetic_glas", root, seed=5, image_size=48, n_images=20) == path
    assert _files(root) == before
    # the dataset name picks the generator
    camelyon = load_datalist(prepare_datalist("synthetic_camelyon", tmp_path / "cam", image_size=32, n_images=16))
    assert camelyon["classes"] == ["normal", "tumor"] and camelyon["negative_classes"] == [0]


def test_existing_datalist_is_validated_and_used_as_is(tmp_path):
    path = _datalist(tmp_path)
    # dataset and dataset_dir are ignored when a datalist is given
    assert prepare_datalist("not_a_dataset", tmp_path / "nowhere", datalist=path) == str(path)
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "valcl1.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DatalistError, match="valcl1.png"):
        prepare_datalist(datalist=path)
    assert prepare_datalist(datalist=path, validate=False) == str(path)
    with pytest.raises(DatalistError, match="gone.json: datalist file not found"):
        prepare_datalist(datalist=tmp_path / "gone.json")


def test_converter_folder_writes_its_datalist(tmp_path):
    root = _camelyon_folder(tmp_path / "camelyon")
    path = prepare_datalist("camelyon", root, seed=0)
    assert path == str(root / "datalist.json")
    data = load_datalist(path)
    assert data["classes"] == ["normal", "tumor"]
    assert sorted(it["id"] for s in SPLITS for it in data[s]) == sorted(
        f"{k}_{i:02d}" for k in ("normal", "tumor") for i in range(12)
    )
    assert prepare_datalist("camelyon", root, seed=1) == path
    assert load_datalist(path) != data  # converted again, with the new seed


def test_read_only_converter_folder_writes_datalist_in_the_run_folder(tmp_path, monkeypatch):
    root = _camelyon_folder(tmp_path / "readonly")
    before = _files(root)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    # tests may run as root, for whom a chmod'ed folder stays writable: ask os.access to say no instead
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == root else access(p, mode, **kw))
    path = prepare_datalist("camelyon", root, seed=0)
    assert path == str(run / "datalist_camelyon.json")
    assert len(load_datalist(path)["train"]) > 0 and _files(root) == before


def test_bad_dataset_arguments(tmp_path):
    with pytest.raises(DatalistError, match=r"unknown dataset 'warwick'; choose one of \('synthetic_glas'"):
        prepare_datalist("warwick", tmp_path / "w")
    with pytest.raises(DatalistError, match=r"nowhere is not a folder \(dataset='glas'\)"):
        prepare_datalist("glas", tmp_path / "nowhere")
    assert not any(tmp_path.iterdir())  # nothing written


def test_check_class_names():
    data = {"classes": ["normal", "tumor"]}
    assert check_class_names(data, 2) == ["normal", "tumor"]
    assert check_class_names(data, "2") == ["normal", "tumor"]  # as a command-line override gives it
    with pytest.raises(DatalistError) as e:
        check_class_names(data, 3)
    assert str(e.value) == (
        "the datalist has 2 classes ['normal', 'tumor'] but the network is configured for num_classes=3; "
        "pass --num_classes 2"
    )
