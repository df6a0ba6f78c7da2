"""Inference on tiles: the predictor and folder runs with bad files (whole-slide images: test_wsi.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from monai_pixelcam.data.io import read_rgb
from monai_pixelcam.inference import PixelCAMPredictor, localize_folder
from monai_pixelcam.networks import build_pixelcam
from monai_pixelcam.transforms import NetworkInput

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = ["benign", "malignant"]
NET_KWARGS = {"encoder": "resnet18", "head": "cam", "num_classes": 2, "base_width": 8}


def make_model_dir(
    root: Path, threshold: float = 0.42, image_size: int = 64, seed: int = 0, mpp: float | None = None
) -> Path:
    """A trained-bundle model folder as the training pipeline writes it (random weights)."""
    torch.manual_seed(seed)
    net = build_pixelcam(**NET_KWARGS)
    root.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), root / "model.pt")
    meta = {
        "network": NET_KWARGS,
        "classes": CLASSES,
        "negative_classes": [],
        "threshold": threshold,
        "image_size": image_size,
        "mpp": mpp,
    }
    (root / "model_meta.json").write_text(json.dumps(meta))
    return root


class DarknessNet(nn.Module):
    """Stand-in network with a known map: foreground logit = 10 * (darkness - offset) at ``stride``, where
    darkness = 1 - mean RGB; class logits from the mean darkness. Lets tests check where maps land."""

    def __init__(self, stride: int = 4, offset: float = 0.3) -> None:
        super().__init__()
        self.stride, self.offset = stride, offset

    def forward(self, x: torch.Tensor) -> dict:
        dark = F.avg_pool2d(1.0 - x.mean(1, keepdim=True), self.stride)
        pix = torch.cat([torch.zeros_like(dark), 10.0 * (dark - self.offset)], dim=1)
        m = dark.mean(dim=(1, 2, 3))
        return {"cls": torch.stack([1.0 - m, m], dim=1) * 5.0, "pix": pix}


def darkness_predictor(threshold: float = 0.5, image_size: int = 64) -> PixelCAMPredictor:
    return PixelCAMPredictor(DarknessNet(), CLASSES, threshold=threshold, image_size=image_size)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(model_dir) -> PixelCAMPredictor:
    return PixelCAMPredictor.from_model_dir(model_dir, device="cpu")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- predictor


def test_from_model_dir_reads_meta(predictor, tmp_path):
    assert predictor.classes == CLASSES
    assert predictor.threshold == pytest.approx(0.42)
    assert predictor.image_size == 64 and predictor.mpp is None
    assert not predictor.network.training
    at_mpp = PixelCAMPredictor.from_model_dir(make_model_dir(tmp_path / "mpp", mpp=0.5), device="cpu")
    assert at_mpp.mpp == 0.5
    assert PixelCAMPredictor.from_model_dir(tmp_path / "mpp", device="cpu", mpp=1.0).mpp == 1.0  # an override
    with pytest.raises(ValueError, match="mpp"):
        PixelCAMPredictor(DarknessNet(), CLASSES, mpp=-1.0)


def test_predict_non_square_image(predictor):
    image = random_image(45, 70)
    out = predictor.predict(image)
    assert out["map"].shape == (45, 70) and out["map"].dtype == np.float32
    assert out["mask"].shape == (45, 70) and out["mask"].dtype == np.uint8
    assert 0.0 <= out["map"].min() and out["map"].max() <= 1.0
    np.testing.assert_array_equal(out["mask"], (out["map"] >= predictor.threshold).astype(np.uint8))
    assert out["probs"].shape == (2,) and out["probs"].sum() == pytest.approx(1.0, abs=1e-6)
    assert out["label"] == int(np.argmax(out["probs"])) and out["class_name"] == CLASSES[out["label"]]


def test_predict_batch_equals_one_by_one(predictor):
    images = [random_image(45, 70, 1), random_image(90, 33, 2), random_image(64, 64, 3)]
    batch = predictor.predict(images)
    assert isinstance(batch, list) and [b["map"].shape for b in batch] == [(45, 70), (90, 33), (64, 64)]
    for img, b in zip(images, batch):
        one = predictor.predict(img)
        np.testing.assert_allclose(b["map"], one["map"], atol=1e-5)
        np.testing.assert_allclose(b["probs"], one["probs"], atol=1e-5)


def test_mask_follows_threshold():
    # left half black, right half white: the darkness map is ~1 on the left and ~0 on the right
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 40:] = 255
    low, high = darkness_predictor(threshold=0.1), darkness_predictor(threshold=0.999)
    a, b = low.predict(image), high.predict(image)
    np.testing.assert_allclose(a["map"], b["map"])
    for pred, p in ((a, low), (b, high)):
        np.testing.assert_array_equal(pred["mask"], (pred["map"] >= p.threshold).astype(np.uint8))
    assert a["mask"][:, :30].all() and not a["mask"][:, 50:].any()
    assert b["mask"].sum() < a["mask"].sum()


def test_predict_tensor_matches_predict(predictor):
    image = random_image(48, 80, 4)
    probs, maps = predictor.predict_tensor(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0)
    assert probs.shape == (1, 2) and maps.shape == (1, 1, 48, 80)
    ref = predictor.predict(image)
    np.testing.assert_allclose(maps[0, 0].numpy(), ref["map"], atol=1e-5)
    np.testing.assert_allclose(probs[0].numpy(), ref["probs"], atol=1e-5)


def test_predict_rejects_bad_arrays(predictor):
    with pytest.raises(ValueError, match="image 0"):
        predictor.predict(np.zeros((8, 8, 5), dtype=np.uint8))


def test_export_records_stain_normalisation_for_every_consumer(tmp_path):
    """A model trained with Macenko normalisation is served with it: export_model writes the setting, the
    predictor (folder, slide and MONAI Label inference) reads it."""
    from monai_pixelcam.export import export_model

    torch.manual_seed(0)
    torch.save(build_pixelcam(**NET_KWARGS).state_dict(), tmp_path / "pixelcam_bloc.pt")
    for flag in (True, False):
        model_dir = tmp_path / f"model_{flag}"
        export_model(tmp_path / "pixelcam_bloc.pt", model_dir, NET_KWARGS, CLASSES, NetworkInput(64, flag),
                     threshold=0.5)  # fmt: skip
        assert json.loads((model_dir / "model_meta.json").read_text())["stain_normalize"] is flag
        predictor = PixelCAMPredictor.from_model_dir(model_dir, device="cpu")
        assert predictor.stain_normalize is flag and (predictor.prepare.stain is not None) is flag


def test_from_model_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        PixelCAMPredictor.from_model_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"model\.pt is missing"):
        PixelCAMPredictor.from_model_dir(empty)
    (empty / "model.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"model_meta\.json is missing"):
        PixelCAMPredictor.from_model_dir(empty)
    # weights of another width than the meta file describes: strict load names the file
    wrong = make_model_dir(tmp_path / "wrong")
    meta = json.loads((wrong / "model_meta.json").read_text())
    meta["network"]["base_width"] = 16
    (wrong / "model_meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.pt"):
        PixelCAMPredictor.from_model_dir(wrong)
    (wrong / "model_meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model_meta\.json"):
        PixelCAMPredictor.from_model_dir(wrong)
    # values of the wrong type name the file and the key instead of running as something else
    typed = make_model_dir(tmp_path / "typed")
    good = json.loads((typed / "model_meta.json").read_text())
    for key, value in [("threshold", True), ("threshold", "high"), ("threshold", None), ("threshold", 1.5),
                       ("image_size", 128.5), ("stain_normalize", "yes"), ("negative_classes", [True])]:  # fmt: skip
        (typed / "model_meta.json").write_text(json.dumps({**good, key: value}))
        with pytest.raises(ValueError, match=rf"model_meta\.json: '{key}' must be"):
            PixelCAMPredictor.from_model_dir(typed)


# ---------------------------------------------------------------- folder


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_localize_folder_with_bad_files(tmp_path, predictor):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.fromarray(random_image(40, 56, 5)).save(src / "a.png")
    Image.fromarray(random_image(48, 32, 6)).save(src / "b.JPG", quality=95)
    (src / "corrupt.png").write_text("this is not a PNG")
    (src / "notes.txt").write_text("hello")
    # 4100 x 4100 PNG of a few KB: more pixels than an image may have to be decoded whole (refused before
    # decoding, not squashed to the network's size)
    Image.fromarray(np.zeros((4100, 4100), np.uint8)).save(src / "huge.png")
    # what a run killed with -9 while writing leaves behind: swept when the next run starts
    (out / "sub").mkdir(parents=True)
    for stale in (out / ".0123456789ab.tmp.a_heatmap.png", out / "sub" / ".ba9876543210.tmp.x_mask.png"):
        stale.write_bytes(b"")
    (out / "keep.tmp.txt").write_text("not a temporary of ours")

    report = localize_folder(src, out, predictor)
    assert not list(out.rglob(".*.tmp.*")) and (out / "keep.tmp.txt").is_file()

    assert report["processed"] == ["a.png", "b.JPG"]
    assert list(report["failed"]) == ["corrupt.png", "huge.png"] and "corrupt.png" in report["failed"]["corrupt.png"]
    assert "4100 x 4100 pixels" in report["failed"]["huge.png"] and "whole slide" in report["failed"]["huge.png"]
    assert report["skipped"] == ["notes.txt"]
    for stem, (h, w) in (("a", (40, 56)), ("b", (48, 32))):
        heat = np.asarray(Image.open(out / f"{stem}_heatmap.png"))
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert heat.shape == (h, w, 3) and heat.dtype == np.uint8
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        image = read_rgb(src / f"{stem}.png" if stem == "a" else src / "b.JPG")
        ref = predictor.predict(image)
        np.testing.assert_array_equal(mask // 255, ref["mask"])
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert overlay.shape == (h, w, 3) and not np.array_equal(overlay, image)
        regions = json.loads((out / f"{stem}_regions.geojson").read_text())
        assert regions["type"] == "FeatureCollection"
        for feature in regions["features"]:  # polygons in the image's own pixels
            ring = np.asarray(feature["geometry"]["coordinates"][0])
            assert ring[:, 0].min() >= -1 and ring[:, 0].max() <= w + 1 and ring[:, 1].max() <= h + 1
            assert feature["properties"]["classification"]["name"] == ref["class_name"]

    rows = _read_csv(out / "predictions.csv")
    assert [r["image"] for r in rows] == ["a.png", "b.JPG"]
    header = ["image", "kind", "class", "prob_benign", "prob_malignant", "threshold", "foreground_fraction"]
    assert list(rows[0]) == header
    for r in rows:
        ref = predictor.predict(read_rgb(src / r["image"]))
        assert r["kind"] == "image" and r["class"] == ref["class_name"]
        assert float(r["prob_benign"]) + float(r["prob_malignant"]) == pytest.approx(1.0, abs=1e-5)
        assert float(r["prob_malignant"]) == pytest.approx(ref["probs"][1], abs=1e-5)
        assert float(r["threshold"]) == pytest.approx(0.42)
        assert float(r["foreground_fraction"]) == pytest.approx(ref["mask"].mean(), abs=1e-5)
    errors = _read_csv(out / "errors.csv")
    assert [(e["image"], e["status"]) for e in errors] == [
        ("corrupt.png", "failed"),
        ("huge.png", "failed"),
        ("notes.txt", "skipped"),
    ]
    assert "corrupt.png" in errors[0]["message"]
    assert not [p for p in out.iterdir() if "tmp" in p.name and p.name != "keep.tmp.txt"]  # none left


def test_localize_folder_nifti_and_stem_clash(tmp_path, predictor):
    import nibabel as nib

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    image = random_image(30, 50, 7)
    Image.fromarray(image).save(src / "x.png")
    Image.fromarray(image).save(src / "x.bmp")
    (src / "sub").mkdir()
    Image.fromarray(image[:20]).save(src / "sub" / "y.tiff")
    report = localize_folder(src, out, predictor, save_nifti=True)
    assert sorted(report["processed"]) == ["x.bmp", "x.png"] and not report["failed"]  # not recursive
    assert np.asarray(Image.open(out / "x_png_mask.png")).shape == (30, 50)
    for stem in ("x_bmp", "x_png"):
        vol = nib.load(out / f"{stem}_map.nii.gz")
        assert vol.shape == (50, 30)  # stored W x H (MONAI's reader layout)
        np.testing.assert_allclose(vol.get_fdata().T, predictor.predict(image)["map"], atol=1e-6)
    recursive = localize_folder(src, tmp_path / "out2", predictor, recursive=True)
    assert recursive["processed"] == ["sub/y.tiff", "x.bmp", "x.png"]
    assert np.asarray(Image.open(tmp_path / "out2" / "sub" / "y_mask.png")).shape == (20, 50)


def test_a_rerun_keeps_predictions_consistent_with_the_output_folder(tmp_path, predictor, monkeypatch):
    """``predictions.csv`` lists every file whose outputs are in the folder: a rerun on other inputs keeps the
    earlier rows while their outputs stay, drops them once removed, and a run stopped mid-way (an exception
    that is not a file error, as a kill is) leaves the rows of the files it finished."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k, name in enumerate(("a.png", "b.png", "c.png")):
        Image.fromarray(random_image(24, 24, k)).save(src / name)
    localize_folder(src, out, predictor)
    assert [r["image"] for r in _read_csv(out / "predictions.csv")] == ["a.png", "b.png", "c.png"]
    first = {r["image"]: r for r in _read_csv(out / "predictions.csv")}

    (src / "a.png").unlink()  # the user moves a processed file away and adds a new one
    Image.fromarray(random_image(24, 24, 9)).save(src / "d.png")
    report = localize_folder(src, out, predictor)
    assert report["processed"] == ["b.png", "c.png", "d.png"]
    rows = {r["image"]: r for r in _read_csv(out / "predictions.csv")}
    assert list(rows) == ["a.png", "b.png", "c.png", "d.png"] and rows["a.png"] == first["a.png"]

    for f in out.glob("a_*"):
        f.unlink()
    localize_folder(src, out, predictor)
    assert [r["image"] for r in _read_csv(out / "predictions.csv")] == ["b.png", "c.png", "d.png"]

    # a first run stopped after its second file (no CSV yet) leaves the rows of the two files it finished
    calls = {"n": 0}
    predict = predictor.predict

    def stop_at_third(image):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return predict(image)

    monkeypatch.setattr(predictor, "predict", stop_at_third)
    (out / "predictions.csv").unlink()
    with pytest.raises(KeyboardInterrupt):
        localize_folder(src, out, predictor)
    assert [r["image"] for r in _read_csv(out / "predictions.csv")] == ["b.png", "c.png"]


def test_localize_folder_refuses_output_in_place(tmp_path, predictor):
    with pytest.raises(ValueError, match="must differ"):
        localize_folder(tmp_path, tmp_path, predictor)
    with pytest.raises(FileNotFoundError):
        localize_folder(tmp_path / "missing", tmp_path / "out", predictor)
