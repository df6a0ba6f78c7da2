"""MONAI Label app without a server: infer task, train task, app info, error answers (needs the label extra)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MONAILABEL_MISSING
import torch

pytest.importorskip("monailabel", reason=MONAILABEL_MISSING)

from monailabel.config import settings  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from PIL import Image  # noqa: E402

from monai_pixelcam.data import load_datalist  # noqa: E402
from monai_pixelcam.atomic import TMP_MARKER  # noqa: E402
from monai_pixelcam.data.datalist import DatalistError  # noqa: E402
from monai_pixelcam.data.io import read_mask, read_rgb  # noqa: E402
from monai_pixelcam.export import publish_model  # noqa: E402
from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from monai_pixelcam.label.infer import PixelCAMInferTask, RequestError, load_image, parse_region  # noqa: E402
from monai_pixelcam.label.app import PixelCAMApp  # noqa: E402
from monai_pixelcam.label.train import (  # noqa: E402
    STATS_FILE,
    PixelCAMTrainTask,
    TrainError,
    datastore_items,
    parse_label,
    resolve_classes,
    split_items,
)
from monai_pixelcam.export import source_checkpoint_from_model  # noqa: E402
from monai_pixelcam.networks import build_classifier, build_pixelcam  # noqa: E402
from monai_pixelcam.networks.weights import load_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["benign", "malignant"]
TINY_NET = {"encoder": "resnet18", "base_width": 8, "num_classes": 2}


def write_model(model_dir: Path, seed: int = 0, threshold: float = 0.5) -> Path:
    """A random-init tiny PixelCAM model folder (model.pt + model_meta.json)."""
    torch.manual_seed(seed)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(build_pixelcam(**TINY_NET).state_dict(), model_dir / "model.pt")
    meta = {"network": TINY_NET, "classes": CLASSES, "negative_classes": [], "threshold": threshold, "image_size": 32}
    (model_dir / "model_meta.json").write_text(json.dumps(meta))
    return model_dir


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    return write_model(tmp_path / "models")


@pytest.fixture()
def png(tmp_path) -> tuple[Path, np.ndarray]:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    path = tmp_path / "tile.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


def test_infer_png_gives_label_image_of_image_size_and_result_json(model_dir, png):
    path, rgb = png
    task = PixelCAMInferTask(model_dir)
    label_file, result = task({"image": str(path), "device": "cpu"})
    try:
        label = np.asarray(Image.open(label_file))
    finally:
        os.remove(label_file)
    assert label.shape == rgb.shape[:2] and set(np.unique(label)) <= {0, 1}
    expected = PixelCAMPredictor.from_model_dir(model_dir, device="cpu").predict(rgb)
    np.testing.assert_array_equal(label, expected["mask"])
    assert result["threshold"] == result["bundle_threshold"] == 0.5
    assert list(result["probabilities"]) == CLASSES and abs(sum(result["probabilities"].values()) - 1) < 1e-6
    assert result["class_name"] == CLASSES[result["label"]] == expected["class_name"]
    assert result["shape"] == [40, 52] and result["region"] is None
    assert result["foreground_fraction"] == pytest.approx(label.mean())
    assert task.info()["trained"] and task.info()["classes"] == CLASSES and task.info()["labels"] == {"roi": 1}


def test_threshold_override_and_bad_parameters(model_dir, png):
    path, _ = png
    task = PixelCAMInferTask(model_dir)
    label_file, result = task({"image": str(path), "device": "cpu", "threshold": 0.0})
    assert (np.asarray(Image.open(label_file)) == 1).all() and result["threshold"] == 0.0
    os.remove(label_file)
    for bad in (1.5, "high", -0.1):
        with pytest.raises(RequestError) as e:
            task({"image": str(path), "device": "cpu", "threshold": bad})
        assert e.value.status_code == 400 and "threshold" in e.value.detail


def test_region_of_a_plain_image(model_dir, png):
    path, rgb = png
    task = PixelCAMInferTask(model_dir)
    label_file, result = task({"image": str(path), "device": "cpu", "location": [8, 4], "size": [20, 16]})
    assert np.asarray(Image.open(label_file)).shape == (16, 20)
    os.remove(label_file)
    assert result["region"] == {"location": [8, 4], "size": [20, 16], "level": 0, "downsample": 1.0}
    beyond_border = parse_region({"location": [40, 30], "size": [50, 50]})
    np.testing.assert_array_equal(load_image(path, beyond_border), rgb[30:, 40:])
    for bad, word in (
        ({"location": [60, 0], "size": [4, 4]}, "outside"),
        ({"location": [1, 1]}, "size"),
        ({"location": [0, 0], "size": [4, 4], "level": 1}, "level"),
        ({"location": [0, 0], "size": [0, 4]}, "size"),
        ({"location": "a,b", "size": [4, 4]}, "location"),
    ):
        with pytest.raises(RequestError) as e:
            task({"image": str(path), "device": "cpu", **bad})
        assert e.value.status_code == 400 and word in e.value.detail, bad


def test_region_of_a_pyramidal_tiff(model_dir, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    level0 = np.random.default_rng(1).integers(0, 256, (256, 192, 3), dtype=np.uint8)
    level1 = level0[::2, ::2].copy()
    path = tmp_path / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(64, 64), photometric="rgb")
        tif.write(level1, tile=(64, 64), photometric="rgb", subfiletype=1)
    region = parse_region({"location": [64, 32], "size": [48, 40]})
    np.testing.assert_array_equal(load_image(path, region), level0[32:72, 64:112])
    region1 = parse_region({"location": [64, 32], "size": [20, 24], "level": 1})
    np.testing.assert_array_equal(load_image(path, region1), level1[16:40, 32:52])
    task = PixelCAMInferTask(model_dir)
    label_file, result = task({"image": str(path), "device": "cpu", "location": [100, 200], "size": [64, 64]})
    assert np.asarray(Image.open(label_file)).shape == (56, 64)  # cut at the slide's bottom border
    os.remove(label_file)
    assert result["region"] == {"location": [100, 200], "size": [64, 56], "level": 0, "downsample": 1.0}
    with pytest.raises(RequestError) as e:
        task({"image": str(path), "device": "cpu"})
    assert e.value.status_code == 400 and "whole-slide" in e.value.detail
    with pytest.raises(RequestError) as e:
        task({"image": str(path), "device": "cpu", "location": [0, 0], "size": [8, 8], "level": 5})
    assert e.value.status_code == 400 and "level 5" in e.value.detail


def test_unreadable_and_missing_images_are_4xx(model_dir, png, tmp_path):
    path, _ = png
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(path.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    task = PixelCAMInferTask(model_dir)
    for image, status, word in (
        (truncated, 422, "truncated.png"),
        (text, 422, "notes.png"),
        (tmp_path / "absent.png", 404, "absent.png"),
        ("", 404, "not in the datastore"),
    ):
        with pytest.raises(RequestError) as e:
            task({"image": str(image) if image else "", "device": "cpu"})
        assert e.value.status_code == status and word in e.value.detail, (image, e.value.detail)


def test_no_trained_model_is_503_and_a_new_model_is_picked_up(tmp_path, png):
    path, _ = png
    task = PixelCAMInferTask(tmp_path / "models", classes=CLASSES)
    assert task.is_valid() and not task.info()["trained"] and task.info()["classes"] == CLASSES
    with pytest.raises(RequestError) as e:
        task({"image": str(path), "device": "cpu"})
    assert e.value.status_code == 503 and str(tmp_path / "models") in e.value.detail
    assert "POST /train/pixelcam" in e.value.detail
    write_model(tmp_path / "models", seed=0, threshold=0.5)
    label_file, first = task({"image": str(path), "device": "cpu"})
    os.remove(label_file)
    predictor = task.predictor("cpu")
    write_model(tmp_path / "models", seed=1, threshold=0.25)
    label_file, second = task({"image": str(path), "device": "cpu"})
    os.remove(label_file)
    assert task.predictor("cpu") is not predictor
    assert (first["bundle_threshold"], second["bundle_threshold"]) == (0.5, 0.25)
    assert first["probabilities"] != second["probabilities"]


@pytest.fixture()
def bundle_dir(tmp_path) -> Path:
    """A bundle folder with the repository's configs and a tiny trained model."""
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    write_model(bundle / "models")
    return bundle


def test_app_info_infer_and_missing_image_id(bundle_dir, png, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(png[0], studies / "tile_a.png")
    app = PixelCAMApp(str(tmp_path / "app"), str(studies), {"bundle_dir": str(bundle_dir)})
    info = app.info()
    assert info["labels"] == {"roi": 1} and info["classes"] == CLASSES and info["trained"]
    assert info["models"]["pixelcam"]["dimension"] == 2 and info["models"]["pixelcam"]["threshold"] == 0.5
    assert info["trainers"]["pixelcam"]["config"]["mode"] == ["auto", "finetune", "full"]
    assert info["datastore"]["total"] == 1
    result = app.infer({"model": "pixelcam", "image": "tile_a", "device": "cpu"})
    assert np.asarray(Image.open(result["file"])).shape == (40, 52) and result["params"]["class_name"] in CLASSES
    os.remove(result["file"])
    with pytest.raises(RequestError) as e:
        app.infer({"model": "pixelcam", "image": "tile_b", "device": "cpu"})
    assert e.value.status_code == 404 and "tile_b" in e.value.detail
    with pytest.raises(ValueError, match="configs"):
        PixelCAMApp(str(tmp_path / "app"), str(studies), {"bundle_dir": str(tmp_path)})


def test_channels_last_setting_reaches_the_model(bundle_dir, png, tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(png[0], studies / "tile_a.png")
    conf = {"bundle_dir": str(bundle_dir), "channels_last": "true"}
    app = PixelCAMApp(str(tmp_path / "app"), str(studies), conf)
    result = app.infer({"model": "pixelcam", "image": "tile_a", "device": "cpu"})
    os.remove(result["file"])
    assert app.infer_task.predictor("cpu").network.forward.channels_last
    with pytest.raises(ValueError, match="--conf channels_last must be true or false, got 'maybe'"):
        PixelCAMApp(str(tmp_path / "app"), str(studies), {**conf, "channels_last": "maybe"})


# --- train task ----------------------------------------------------------------------------------------
def test_parse_label_and_resolve_classes():
    assert [parse_label(v, CLASSES) for v in ("benign", " Malignant ", 1, "0", np.int64(1))] == [0, 1, 1, 0, 1]
    for bad in ("tumor", 2, "-1", True, 0.5):
        with pytest.raises(ValueError, match=f"label {bad!r}|label index {bad}"):
            parse_label(bad, CLASSES)
    assert resolve_classes(["a", "b"], ["x", "y"], ["z"]) == ["a", "b"]
    assert resolve_classes([], ["x", "y"], ["z"]) == ["x", "y"]
    assert resolve_classes([], [], ["tumor", "normal", "tumor"]) == ["normal", "tumor"]
    with pytest.raises(DatalistError, match="--conf classes"):
        resolve_classes([], [], ["tumor", 1])


def _items(n_per_class: int, masked_per_class: int) -> list[dict]:
    return [
        {"image": f"{c}{i}.png", "mask": f"m{c}{i}.png" if i < masked_per_class else None, "label": c, "id": f"{c}-{i}"}
        for c in (0, 1)
        for i in range(n_per_class)
    ]


def test_split_items_keeps_masked_images_for_valpx_and_test():
    splits = split_items(_items(10, 3), CLASSES, valcl_fraction=0.2, valpx_per_class=2, seed=0)
    ids = {k: {it["id"] for it in v} for k, v in splits.items()}
    assert sum(len(v) for v in ids.values()) == 20 and len(set().union(*ids.values())) == 20
    assert all(it["mask"] for s in ("valpx", "test") for it in splits[s])
    assert not any(it["mask"] for s in ("train", "valcl") for it in splits[s])
    assert (len(splits["valpx"]), len(splits["test"])) == (4, 2)
    assert {it["label"] for it in splits["train"]} == {0, 1} and {it["label"] for it in splits["valcl"]} == {0, 1}
    assert splits == split_items(_items(10, 3), CLASSES, valcl_fraction=0.2, valpx_per_class=2, seed=0)
    two = split_items(_items(4, 1), CLASSES)  # one masked image per class: one to valpx, one to test
    assert (len(two["valpx"]), len(two["test"])) == (1, 1)
    with pytest.raises(DatalistError) as e:
        split_items([it for it in _items(6, 1) if it["label"] == 0 or not it["mask"]], CLASSES)
    assert "at least 2" in str(e.value)
    with pytest.raises(DatalistError) as e:
        split_items([it for it in _items(6, 2) if it["label"] == 0 or it["mask"]], CLASSES)
    assert "two classes" in str(e.value)


def _studies(tmp_path: Path, datalist_path: Path, mask_every: int = 3) -> tuple[LocalDatastore, dict]:
    """A MONAI Label local datastore of a synthetic datalist's images: image-level labels as image info
    ``label`` (class names), the masks of every ``mask_every``-th image as ``final`` labels."""
    data = load_datalist(datalist_path)
    studies = tmp_path / "studies"
    studies.mkdir()
    items = sorted((it for s in ("train", "valcl", "valpx", "test") for it in data[s]), key=lambda d: d["id"])
    for it in items:
        shutil.copy(it["image"], studies / f"{it['id']}.png")
    store = LocalDatastore(str(studies), extensions=["*.png"], auto_reload=False)
    for k, it in enumerate(items):
        store.update_image_info(it["id"], {"label": data["classes"][it["label"]]})
        if k % mask_every == 0:
            store.save_label(it["id"], it["mask"], "final", {})
    return store, {it["id"]: it for it in items}


def test_datastore_items_read_labels_and_final_masks(tmp_path, tiny_glas):
    store, items = _studies(tmp_path, Path(tiny_glas))
    store.update_image_info("glas_0001", {"label": ""})
    store.update_image_info("glas_0002", {"label": 0})
    got, unlabelled = datastore_items(store, CLASSES)
    assert unlabelled == ["glas_0001"] and len(got) == len(items) - 1
    by_id = {it["id"]: it for it in got}
    assert by_id["glas_0002"]["label"] == 0 and by_id["glas_0004"]["label"] == items["glas_0004"]["label"]
    assert by_id["glas_0003"]["mask"] and by_id["glas_0004"]["mask"] is None
    np.testing.assert_array_equal(read_mask(by_id["glas_0003"]["mask"]), read_mask(items["glas_0003"]["mask"]))
    np.testing.assert_array_equal(read_rgb(by_id["glas_0004"]["image"]), read_rgb(items["glas_0004"]["image"]))
    store.update_image_info("glas_0005", {"label": "tumour"})
    with pytest.raises(DatalistError, match="glas_0005"):
        datastore_items(store, CLASSES)


def test_source_checkpoint_and_publish(tmp_path, model_dir):
    source = source_checkpoint_from_model(model_dir / "model.pt", tmp_path / "src" / "source_bloc.pt")
    classifier = load_checkpoint(build_classifier("resnet18", "cam", 2, base_width=8), source)
    pixelcam = build_pixelcam(**TINY_NET)
    pixelcam.load_state_dict(torch.load(model_dir / "model.pt", weights_only=True))
    torch.testing.assert_close(classifier.image_head.fc.weight, pixelcam.image_head.fc.weight)
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(classifier.eval()(x), pixelcam.eval()(x)["cls"])
    with pytest.raises(ValueError, match="not a PixelCAMNet"):
        source_checkpoint_from_model(source, tmp_path / "again.pt")

    run = tmp_path / "run"
    write_model(run, seed=3, threshold=0.3)
    target = tmp_path / "published"
    files = publish_model(run, target)
    assert [f.name for f in files] == ["model.pt", "model_meta.json"] and sorted(os.listdir(target)) == sorted(
        ["model.pt", "model_meta.json"]
    )
    assert json.loads((target / "model_meta.json").read_text())["threshold"] == 0.3
    with pytest.raises(FileNotFoundError, match="did not write .*empty"):
        publish_model(tmp_path / "empty", target)


def test_train_task_full_then_finetune_publishes_models(tmp_path, tiny_glas):
    store, _ = _studies(tmp_path, Path(tiny_glas), mask_every=3)
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    task = PixelCAMTrainTask(bundle)
    request = {
        "source_epochs": 1,
        "pixelcam_epochs": 1,
        "image_size": 48,
        "crop_size": 40,
        "batch_size": 4,
        "num_workers": 0,
        "device": "cpu",
        "bundle_overrides": {"cam_methods": ["cam"], "tensorboard_images": 0},
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is faster and steadier than two on a busy machine
    try:
        full = task(request, store)
        model_pt = bundle / "models" / "model.pt"
        first_mtime = model_pt.stat().st_mtime_ns
        infer = PixelCAMInferTask(bundle / "models")
        label_file, result = infer({"image": store.get_image_uri("glas_0000"), "device": "cpu"})
        os.remove(label_file)
        # a fine-tune keeps the published model's input definition, whatever the request's image_size
        finetune = task({**request, "pixelcam_epochs": 1, "image_size": 56}, store)
    finally:
        torch.set_num_threads(threads)
    assert full["mode"] == "full" and finetune["mode"] == "finetune"
    assert full["classes"] == CLASSES and full["images"]["valpx"] >= 1 and full["images"]["test"] >= 1
    assert json.loads((bundle / "models" / STATS_FILE).read_text())["run"] == finetune["run"] == task.stats()["run"]
    run_full, run_ft = Path(full["run_dir"]), Path(finetune["run_dir"])
    assert (run_full / "source_last.pt").is_file() and not (run_ft / "source_last.pt").exists()
    assert (run_ft / "source_bloc.pt").is_file() and list((run_ft / "tb").rglob("events.out.tfevents.*"))
    assert model_pt.stat().st_mtime_ns != first_mtime
    # publishing leaves no temporary file of atomic_path (".<hex>.tmp.<name>") beside the model
    assert not [p.name for p in (bundle / "models").rglob("*") if TMP_MARKER in p.name]
    meta = json.loads((bundle / "models" / "model_meta.json").read_text())
    metrics = json.loads((run_ft / "metrics.json").read_text())
    assert meta["classes"] == CLASSES and meta["threshold"] == metrics["pixelcam"]["bloc"]["threshold"]
    assert (meta["image_size"], meta["stain_normalize"]) == (48, False)
    assert result["class_name"] in CLASSES
    label_file, again = infer({"image": store.get_image_uri("glas_0000"), "device": "cpu"})
    os.remove(label_file)
    assert again["model"]["modified"] != result["model"]["modified"] and again["bundle_threshold"] == meta["threshold"]
    with pytest.raises(TrainError, match="mode"):
        task({**request, "mode": "sometimes"}, store)
    with pytest.raises(TrainError, match="pixelcam_epochs"):
        task({**request, "pixelcam_epochs": 0}, store)
    # a failure inside the bundle is reported by its root cause, not by the config parser's wrapper
    with pytest.raises(TrainError, match="no_such_encoder") as e:
        task({**request, "mode": "full", "bundle_overrides": {"encoder": "no_such_encoder"}}, store)
    assert "ConfigExpression" not in str(e.value)
