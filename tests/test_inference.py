"""Inference: predictor (tiles), folder runs with bad files, and whole-slide sliding windows on a pyramidal TIFF."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from monai_pixelcam.data.io import read_rgb
from monai_pixelcam.data.synthetic import render_tile
from monai_pixelcam.inference import (
    PixelCAMPredictor,
    TiledTiffWSIReader,
    is_whole_slide,
    localize_folder,
    localize_slide,
    tile_grid,
    tissue_mask,
)
from monai_pixelcam.networks import build_pixelcam

CLASSES = ["benign", "malignant"]
NET_KWARGS = {"encoder": "resnet18", "head": "cam", "num_classes": 2, "base_width": 8}


def make_model_dir(root: Path, threshold: float = 0.42, image_size: int = 64, seed: int = 0) -> Path:
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
    }
    (root / "model_meta.json").write_text(json.dumps(meta))
    return root


class DarknessNet(nn.Module):
    """Stand-in network with a known map: foreground logit = 10 * (darkness - 0.3) at stride 4, where
    darkness = 1 - mean RGB; class logits from the mean darkness. Lets tests check where maps land."""

    def forward(self, x: torch.Tensor) -> dict:
        dark = F.avg_pool2d(1.0 - x.mean(1, keepdim=True), 4)
        pix = torch.cat([torch.zeros_like(dark), 10.0 * (dark - 0.3)], dim=1)
        m = dark.mean(dim=(1, 2, 3))
        return {"cls": torch.stack([1.0 - m, m], dim=1) * 5.0, "pix": pix}


def darkness_predictor(threshold: float = 0.5, image_size: int = 64) -> PixelCAMPredictor:
    return PixelCAMPredictor(DarknessNet(), CLASSES, threshold=threshold, image_size=image_size)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # the networks here are tiny: a second intra-op thread brings nothing, and on a busy 2-core machine
    # (the suite runs beside other jobs) the threads' synchronisation made one 64 x 64 forward ~1 s, not ~2 ms
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def predictor(model_dir) -> PixelCAMPredictor:
    return PixelCAMPredictor.from_model_dir(model_dir, device="cpu")


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- predictor


def test_from_model_dir_reads_meta(predictor):
    assert predictor.classes == CLASSES
    assert predictor.threshold == pytest.approx(0.42)
    assert predictor.image_size == 64
    assert not predictor.network.training


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

    report = localize_folder(src, out, predictor)

    assert report["processed"] == ["a.png", "b.JPG"]
    assert list(report["failed"]) == ["corrupt.png"] and "corrupt.png" in report["failed"]["corrupt.png"]
    assert report["skipped"] == ["notes.txt"]
    for stem, (h, w) in (("a", (40, 56)), ("b", (48, 32))):
        heat = np.asarray(Image.open(out / f"{stem}_heatmap.png"))
        mask = np.asarray(Image.open(out / f"{stem}_mask.png"))
        assert heat.shape == (h, w, 3) and heat.dtype == np.uint8
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
        ref = predictor.predict(read_rgb(src / f"{stem}.png" if stem == "a" else src / "b.JPG"))
        np.testing.assert_array_equal(mask // 255, ref["mask"])

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
    assert [(e["image"], e["status"]) for e in errors] == [("corrupt.png", "failed"), ("notes.txt", "skipped")]
    assert "corrupt.png" in errors[0]["message"]
    assert not [p for p in out.iterdir() if "tmp" in p.name]  # atomic writes leave no temporaries


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


def test_localize_folder_refuses_output_in_place(tmp_path, predictor):
    with pytest.raises(ValueError, match="must differ"):
        localize_folder(tmp_path, tmp_path, predictor)
    with pytest.raises(FileNotFoundError):
        localize_folder(tmp_path / "missing", tmp_path / "out", predictor)


# ---------------------------------------------------------------- whole-slide images

CELL = 256  # level-0 size of a tissue cell
TISSUE_CELLS = {(0, 0): 1.0, (1, 2): 0.55, (2, 1): 0.8, (3, 0): 0.7, (3, 2): 0.9}  # (row, col) -> brightness


def _downsample2(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[0] // 2, img.shape[1] // 2
    return img[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.float32).mean(axis=(1, 3)).round().astype(np.uint8)


def _pool(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks of the two leading axes."""
    h, w = a.shape[0] // f, a.shape[1] // f
    a = np.asarray(a, dtype=np.float64)[: h * f, : w * f]
    return a.reshape(h, f, w, f, *a.shape[2:]).mean(axis=(1, 3))


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A 1024 x 768 three-level pyramidal TIFF (tiles 256 x 256 / 128 x 128, reduced-resolution pages) of
    white glass with five synthetic CAMELYON tissue cells of different brightness."""
    level0 = np.full((4 * CELL, 3 * CELL, 3), 245, dtype=np.uint8)
    for k, ((r, c), bright) in enumerate(TISSUE_CELLS.items()):
        tile, _ = render_tile("camelyon", k % 2, CELL, seed=3, index=k)
        level0[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = (tile * bright).astype(np.uint8)
    levels = [level0, _downsample2(level0)]
    levels.append(_downsample2(levels[1]))
    path = tmp_path_factory.mktemp("slides") / "slide.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], tile=(256, 256), photometric="rgb", compression="zlib")
        for lv in levels[1:]:
            tif.write(lv, tile=(128, 128), photometric="rgb", subfiletype=1, compression="zlib")
    return path, levels


def test_tile_grid_and_tissue_mask():
    assert tile_grid(256, 64, 64) == [0, 64, 128, 192]
    assert tile_grid(100, 64, 64) == [0, 36]  # the last tile moves inward instead of reading padding
    assert tile_grid(30, 64, 64) == [0]
    assert tile_grid(128, 64, 32) == [0, 32, 64]
    glass = np.full((60, 80, 3), 240, dtype=np.uint8)
    glass[10:30, 20:50] = (180, 90, 160)
    mask, t = tissue_mask(glass)
    inside = np.zeros(mask.shape, dtype=bool)
    inside[10:30, 20:50] = True
    assert mask[12:28, 22:48].all() and not mask[~inside].any() and 0.02 <= t <= 0.15
    pink = np.array([150, 60, 140], dtype=np.uint8)
    all_tissue = np.random.default_rng(0).integers(0, 60, (40, 40, 3), dtype=np.uint8) + pink
    assert tissue_mask(all_tissue)[0].all()  # clamped Otsu does not split tissue-only thumbnails


def test_wsi_readers_agree_on_levels_and_regions(slide):
    from monai.data import WSIReader

    path, levels = slide
    stock, tiled = WSIReader(backend="tifffile"), TiledTiffWSIReader()
    a, b = stock.read(str(path)), tiled.read(str(path))
    try:
        for reader, wsi in ((stock, a), (tiled, b)):
            assert reader.get_level_count(wsi) == 3
            assert [reader.get_size(wsi, lv) for lv in range(3)] == [(1024, 768), (512, 384), (256, 192)]
        # location is (row, col) in the level-0 frame; size (height, width) at the level
        for loc, size, lv in (((256, 512), (64, 96), 1), ((1000, 700), (40, 40), 0), ((0, 0), (256, 192), 2)):
            pa, _ = stock.get_data(a, location=loc, size=size, level=lv)
            pb, _ = tiled.get_data(b, location=loc, size=size, level=lv)
            np.testing.assert_array_equal(pa, pb)
            r, c = loc[0] // 2**lv, loc[1] // 2**lv
            np.testing.assert_array_equal(pb, levels[lv][r : r + size[0], c : c + size[1]].transpose(2, 0, 1))
    finally:
        a.close()
        b.close()


def test_read_thumbnail_in_blocks(slide, monkeypatch):
    from monai_pixelcam.inference import read_thumbnail, wsi

    path, levels = slide
    reader = TiledTiffWSIReader()
    handle = reader.read(str(path))
    try:
        whole, factor = read_thumbnail(reader, handle, 2)
        assert factor == 1 and np.array_equal(whole, levels[2])
        monkeypatch.setattr(wsi, "_BLOCK", 100)  # several blocks, and blocks not aligned with the image
        small, factor = read_thumbnail(reader, handle, 0, max_pixels=256 * 192)
    finally:
        handle.close()
    assert factor == 4 and small.shape == (256, 192, 3)
    assert np.abs(small.astype(int) - _pool(levels[0], 4).round()).max() <= 1
def test_localize_slide_tissue_tiles_and_heatmap_placement(slide, tmp_path):
    path, levels = slide
    assert is_whole_slide(path)
    pred = darkness_predictor(threshold=0.5, image_size=64)
    res = localize_slide(path, pred, tmp_path, level=1, batch_size=8)

    # level 1 is 512 x 384: 8 x 6 tiles of 64; each tissue cell is 2 x 2 of them
    assert res["heatmap_level"] == 2 and res["heatmap"].shape == (256, 192)
    assert res["tiles_total"] == 48
    assert res["tiles_predicted"] == 4 * len(TISSUE_CELLS) and res["tiles_skipped"] == 48 - 4 * len(TISSUE_CELLS)
    cell = CELL // 4  # cell side at the heatmap level
    means = {}
    for r in range(4):
        for c in range(3):
            block = (slice(r * cell, (r + 1) * cell), slice(c * cell, (c + 1) * cell))
            assert res["covered"][block].all() == ((r, c) in TISSUE_CELLS)
            assert res["tissue"][block].mean() > 0.9 if (r, c) in TISSUE_CELLS else not res["tissue"][block].any()
            if (r, c) in TISSUE_CELLS:
                means[(r, c)] = res["heatmap"][block].mean()
            else:
                assert not res["heatmap"][block].any()
    # darker cells give higher maps: the tile maps landed on their own cells
    order = sorted(TISSUE_CELLS, key=TISSUE_CELLS.get)
    assert [means[k] for k in order] == sorted(means.values(), reverse=True)
    # pixelwise: DarknessNet's map of level 1 (stride 4, so 128 x 96) against the heatmap pooled to that
    # grid; a shift by one pixel of that grid drops the correlation to about 0.6
    expected = 1.0 / (1.0 + np.exp(-10.0 * (_pool(1.0 - levels[1].mean(axis=-1) / 255.0, 4) - 0.3)))
    heat, cov = _pool(res["heatmap"], 2), _pool(res["covered"], 2) == 1
    assert np.corrcoef(heat[cov], expected[cov])[0, 1] > 0.9
    cov = res["covered"]
    np.testing.assert_array_equal(res["mask"], ((res["heatmap"] >= 0.5) & cov).astype(np.uint8))

    for name, shape in (("heatmap", (256, 192, 3)), ("mask", (256, 192)), ("tissue", (256, 192))):
        assert np.asarray(Image.open(res["paths"][name])).shape == shape
    rows = _read_csv(res["paths"]["tiles"])
    assert len(rows) == res["tiles_predicted"]
    locations = {(int(r["row"]), int(r["col"])) for r in rows}
    assert {(lr // CELL, lc // CELL) for lr, lc in locations} == set(TISSUE_CELLS)
    assert all(float(r["prob_benign"]) + float(r["prob_malignant"]) == pytest.approx(1.0, abs=1e-5) for r in rows)


def test_localize_slide_overlap_and_options(slide, tmp_path):
    path, _ = slide
    pred = darkness_predictor()
    plain = localize_slide(path, pred, tmp_path / "a", level=1, heatmap_level=1)
    overlapped = localize_slide(path, pred, tmp_path / "b", level=1, heatmap_level=1, overlap=32, batch_size=3)
    assert plain["heatmap"].shape == (512, 384) == overlapped["heatmap"].shape
    assert overlapped["tiles_predicted"] > plain["tiles_predicted"]
    # averaging overlapping windows of a translation-equivariant map changes it only near tile borders
    cov = plain["covered"] & overlapped["covered"]
    assert np.abs(plain["heatmap"][cov] - overlapped["heatmap"][cov]).mean() < 0.05
    with pytest.raises(ValueError, match="levels 0..2"):
        localize_slide(path, pred, tmp_path / "c", level=3)
    with pytest.raises(ValueError, match="overlap"):
        localize_slide(path, pred, tmp_path / "c", overlap=64)


def test_localize_folder_routes_slides(slide, tmp_path, predictor):
    path, _ = slide
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "slide.tif").write_bytes(path.read_bytes())
    Image.fromarray(random_image(40, 40, 8)).save(src / "small.tif")  # a plain TIFF stays an image
    report = localize_folder(src, out, predictor, save_nifti=True, slide_kwargs={"level": 1})
    assert report["processed"] == ["slide.tif", "small.tif"] and not report["failed"]
    kinds = {r["image"]: r["kind"] for r in _read_csv(out / "predictions.csv")}
    assert kinds == {"slide.tif": "slide", "small.tif": "image"}
    for name in ("slide_heatmap.png", "slide_mask.png", "slide_tissue.png", "slide_tiles.csv", "slide_map.nii.gz"):
        assert (out / name).is_file()
    assert np.asarray(Image.open(out / "slide_mask.png")).shape == (256, 192)
    assert np.asarray(Image.open(out / "small_mask.png")).shape == (40, 40)
