"""Whole-slide inference: JPEG pyramids through OpenSlide and tifffile, mpp and scale, tissue, seamless blending,
GeoJSON and overlay outputs, bad slides in a folder, and torchrun sharding on CPU."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_inference import CLASSES, DarknessNet

from monai_pixelcam.data.synthetic import render_tile
from monai_pixelcam.inference import (
    BlendedMerger,
    PixelCAMPredictor,
    SlideSettings,
    SlideWindowDataset,
    TiledTiffWSIReader,
    choose_scale,
    close_slide,
    heatmap_patch_size,
    is_whole_slide,
    localize_folder,
    localize_slide,
    open_slide,
    plan_slide,
    read_rgb_region,
    read_thumbnail,
    slide_mpp,
    tissue_mask,
    write_pyramid_tiff,
)
from monai_pixelcam.networks import build_pixelcam
from monai_pixelcam.transforms import NetworkInput

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CELL = 256  # level-0 side of a tissue cell
TISSUE_CELLS = {(0, 0): 1.0, (1, 2): 0.45, (2, 1): 0.9, (3, 0): 0.5, (3, 2): 0.95}  # (row, col) -> brightness
DARK = {k for k, v in TISSUE_CELLS.items() if v <= 0.5}  # the cells DarknessNet calls foreground
MPP = 0.499


def darkness_predictor(mpp: float | None = 2 * MPP, image_size: int = 64) -> PixelCAMPredictor:
    """Darkness at stride 8 is about 0.35 on the bright cells and 0.7 on the dark ones: centred between them."""
    return PixelCAMPredictor(DarknessNet(stride=8, offset=0.53), CLASSES, threshold=0.5, image_size=image_size, mpp=mpp)


def _pool(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks of the two leading axes."""
    h, w = a.shape[0] // f, a.shape[1] // f
    a = np.asarray(a, dtype=np.float64)[: h * f, : w * f]
    return a.reshape(h, f, w, f, *a.shape[2:]).mean(axis=(1, 3))


def _level0() -> np.ndarray:
    """1024 x 768 of white glass with five synthetic CAMELYON tissue cells of different brightness."""
    level0 = np.full((4 * CELL, 3 * CELL, 3), 245, dtype=np.uint8)
    for k, ((r, c), bright) in enumerate(TISSUE_CELLS.items()):
        tile, _ = render_tile("camelyon", k % 2, CELL, seed=3, index=k)
        level0[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = (tile * bright).astype(np.uint8)
    return level0


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict:
    """The same level 0 as an Aperio SVS (JPEG q90, levels 1, 2, 4, `AppMag = 20|MPP = 0.499`), as an SVS
    without MPP, and as a zlib TIFF whose reduced levels are SubIFDs (what MONAI's own tifffile reader reads)."""
    root = tmp_path_factory.mktemp("slides")
    level0 = _level0()
    paths = {
        "svs": write_pyramid_tiff(root / "aperio.svs", level0, mpp=MPP, downsamples=(2, 4), tile=128),
        "nompp": write_pyramid_tiff(root / "nompp.svs", level0, mpp=None, downsamples=(2, 4), tile=128),
    }
    import tifffile

    paths["zlib"] = root / "zlib.tif"
    with tifffile.TiffWriter(paths["zlib"]) as tif:
        tif.write(level0, tile=(256, 256), photometric="rgb", compression="zlib", subifds=2)
        for f in (2, 4):
            tif.write(_pool(level0, f).round().astype(np.uint8), tile=(128, 128), photometric="rgb", subfiletype=1,
                      compression="zlib")
    return {"level0": level0, **paths}


# ---------------------------------------------------------------- readers and mpp


def test_both_backends_read_the_jpeg_pyramid_alike(slides):
    # Both decode the same JPEG bitstream (libjpeg-turbo in openslide-bin and in imagecodecs). JPEG decoders may
    # legitimately differ by about 1 grey level after the inverse DCT and colour conversion (ISO/IEC 10918-2
    # accuracy), so the backends must agree within 2 levels (mean < 0.5); against the original, quality 90
    # loses about 2 levels on average on this texture (bound 4).
    level0 = slides["level0"]
    handles = {b: open_slide(slides["svs"], b) for b in ("openslide", "tifffile")}
    try:
        assert {b: r.backend for b, (r, _) in handles.items()} == {"openslide": "openslide", "tifffile": "tifffile"}
        for backend, (reader, wsi) in handles.items():
            # the SVS's thumbnail page is not a level for either backend
            assert reader.get_level_count(wsi) == 3, backend
            assert [reader.get_size(wsi, lv) for lv in range(3)] == [(1024, 768), (512, 384), (256, 192)]
            assert [reader.get_downsample_ratio(wsi, lv) for lv in range(3)] == pytest.approx([1, 2, 4])
            assert slide_mpp(reader, wsi) == pytest.approx((MPP, MPP))
        for loc, size, lv in (((0, 0), (1024, 768), 0), ((301, 157), (77, 99), 1), ((0, 0), (256, 192), 2)):
            a, b = (read_rgb_region(r, w, loc, size, lv).astype(int) for r, w in handles.values())
            assert a.shape == b.shape == (*size, 3)
            assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.5
            r, c = round(loc[0] / 2**lv), round(loc[1] / 2**lv)
            ref = _pool(level0, 2**lv)[r : r + size[0], c : c + size[1]]
            assert np.abs(b - ref).mean() < 4.0
        # past the border: white glass, not OpenSlide's transparent black
        for reader, wsi in handles.values():
            edge = read_rgb_region(reader, wsi, (1000, 700), (64, 100), 0)
            assert (edge[30:, :] == 255).all() and (edge[:, 70:] == 255).all()
    finally:
        for _, wsi in handles.values():
            close_slide(wsi)


def test_mpp_from_resolution_tags_and_missing(slides, tmp_path):
    generic = write_pyramid_tiff(tmp_path / "generic.tif", slides["level0"][:512, :512], mpp=0.25, aperio=False,
                                 downsamples=(2,), tile=128)
    for path, expected in ((generic, (0.25, 0.25)), (slides["nompp"], None)):
        for backend in ("openslide", "tifffile"):
            reader, wsi = open_slide(path, backend)
            try:
                found = slide_mpp(reader, wsi)
                assert found == (None if expected is None else pytest.approx(expected)), (path.name, backend)
            finally:
                close_slide(wsi)


def test_monai_and_tiled_tifffile_readers_agree(slides):
    from monai.data import WSIReader

    stock, tiled = WSIReader(backend="tifffile"), TiledTiffWSIReader()
    a, b = stock.read(str(slides["zlib"])), tiled.read(str(slides["zlib"]))
    try:
        assert tiled.get_level_count(b) == 3  # levels in SubIFDs: MONAI's reader sees one
        for loc, size in (((256, 512), (64, 96)), ((1000, 700), (40, 40))):
            pa, _ = stock.get_data(a, location=loc, size=size, level=0)
            pb, _ = tiled.get_data(b, location=loc, size=size, level=0)
            np.testing.assert_array_equal(pa, pb)
        pb, _ = tiled.get_data(b, location=(256, 512), size=(64, 96), level=1)
        np.testing.assert_array_equal(pb.transpose(1, 2, 0), _pool(slides["level0"], 2).round()[128:192, 256:352])
    finally:
        a.close()
        b.close()


def test_read_thumbnail_in_blocks(slides, monkeypatch):
    from monai_pixelcam.inference import wsi

    reader, handle = open_slide(slides["zlib"], "tifffile")
    try:
        monkeypatch.setattr(wsi, "_BLOCK", 100)  # several blocks, not aligned with the image
        small, factor = read_thumbnail(reader, handle, 0, max_pixels=256 * 192)
    finally:
        close_slide(handle)
    assert factor == 4 and small.shape == (256, 192, 3)
    assert np.abs(small.astype(int) - _pool(slides["level0"], 4).round()).max() <= 1


def test_open_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + os.urandom(200))
    with pytest.raises(ValueError, match=r"broken\.svs.*openslide.*tifffile"):
        open_slide(bad)
    with pytest.raises(FileNotFoundError, match="missing"):
        open_slide(tmp_path / "missing.svs")
    assert is_whole_slide(tmp_path / "x.ndpi") and is_whole_slide(tmp_path / "x.MRXS")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.tif")
    assert not is_whole_slide(tmp_path / "small.tif")


# ---------------------------------------------------------------- scale


def test_choose_scale_levels_and_resize():
    downsamples = [1.0, 4.0001, 16.0]  # vendors store 4.0001 for 4
    cases = {  # model mpp -> (level, read size of a 64 px window) on a 0.25 µm/px slide
        1.0: (1, (64, 64)),  # level 1 is at the model's mpp: no resize
        0.5: (0, (128, 128)),  # between levels: the finer one, resized down
        2.0: (1, (128, 128)),
        4.0: (2, (64, 64)),
        0.125: (0, (32, 32)),  # finer than level 0: resized up
    }
    for model_mpp, (level, size) in cases.items():
        scale = choose_scale(downsamples, (0.25, 0.25), model_mpp, 64)
        assert (scale.level, scale.read_size(64), scale.mpp_source) == (level, size, "slide"), model_mpp
    anisotropic = choose_scale(downsamples, (0.25, 0.5), 1.0, 64)
    assert anisotropic.level == 0 and anisotropic.read_size(64) == (256, 128)
    override = choose_scale(downsamples, (0.25, 0.25), 1.0, 64, override_mpp=0.5)
    assert (override.level, override.read_size(64), override.mpp_source) == (0, (128, 128), "override")
    native = choose_scale(downsamples, (0.25, 0.25), None, 64)
    assert (native.level, native.read_size(64), native.mpp_source) == (0, (64, 64), "native")
    with pytest.raises(ValueError, match="positive"):
        choose_scale(downsamples, None, 1.0, 64, override_mpp=0)


def test_heatmap_patch_size():
    assert heatmap_patch_size(160, 120, (1000, 1000), 10**8) == 160  # small slide: full resolution
    assert heatmap_patch_size(160, 120, (1000, 1000), 10**8, map_size=20) == 40  # twice the network's map
    out = heatmap_patch_size(160, 120, (20000, 20000), 2048 * 2048)
    assert out % 4 == 0 and (20000 * out / 160) ** 2 <= 2048 * 2048  # whole-pixel steps (120 * out / 160)
    assert heatmap_patch_size(160, 159, (20000, 20000), 2048 * 2048) == 16  # no whole-pixel step fits: floor
    with pytest.raises(ValueError, match="max_heatmap_pixels"):
        heatmap_patch_size(160, 120, (100000, 100000), 100)


@pytest.mark.parametrize(
    "bad, message",
    [({"batch_size": 0}, "batch_size must be positive"), ({"num_workers": -1}, "num_workers must be >= 0"),
     ({"min_tissue_fraction": 1.0}, r"min_tissue_fraction must lie in \[0, 1\)"),
     ({"overview_long_side": 0}, "overview_long_side must be positive")],
)
def test_slide_settings_name_the_bad_value(bad, message):
    with pytest.raises(ValueError, match=message):
        SlideSettings(**bad)


def test_missing_mpp_warns_once_and_override(slides, tmp_path, caplog):
    pred = darkness_predictor()
    with caplog.at_level(logging.WARNING, logger="monai_pixelcam"):
        res = localize_slide(
            slides["nompp"], pred, tmp_path / "a", SlideSettings(max_heatmap_pixels=256 * 192, num_workers=0),
            progress=False,
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "nompp.svs" in warnings[0] and "assuming level 0 is at the model's 0.998" in warnings[0]
    assert res.scale.mpp_source == "assumed" and res.level == 0 and res.read_size == (64, 64)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_pixelcam"):
        res = localize_slide(slides["nompp"], pred, tmp_path / "b", SlideSettings(mpp=MPP / 2, num_workers=0), False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert res.scale.mpp_source == "override" and res.level == 2 and res.read_size == (64, 64)


# ---------------------------------------------------------------- merging and tissue


def test_blended_merger_against_avg_merger():
    from monai.inferers import AvgMerger

    patches = [(torch.zeros(1, 1, 8, 8), (0, 0)), (torch.ones(1, 1, 8, 8), (0, 4))]
    blended, constant, avg = BlendedMerger((1, 1, 10, 14)), BlendedMerger((1, 1, 10, 14), mode="constant"), AvgMerger((1, 1, 10, 14))
    for values, loc in patches:
        for merger in (blended, constant, avg):
            merger.aggregate(values, loc)
    out, flat, ref = blended.finalize()[0, 0], constant.finalize()[0, 0], avg.finalize()[0, 0]
    torch.testing.assert_close(flat[:8, :12], ref[:8, :12])  # constant weights: MONAI's average
    assert torch.isnan(out[8:]).all() and torch.isnan(out[:, 12:]).all()  # nothing covered: NaN
    row = out[4]
    assert row[:4].eq(0).all() and row[8:12].eq(1).all()
    assert (row[4:8].diff() > 0).all() and 0.1 < row[5] < row[6] < 0.9  # a ramp across the overlap, no step


def test_block_reads_match_window_reads(slides):
    """Windows cut from one read (and resize) per block are the windows read one by one: exactly without a
    resize, and within the resize filter's reach at the window border with one (1.5 level-0 px per network px)."""
    for model_mpp, stain in ((2 * MPP, False), (2 * MPP, True), (1.5 * MPP, False)):
        pred = darkness_predictor(mpp=model_mpp)
        if stain:
            pred.prepare = NetworkInput(pred.image_size, stain_normalize=True)
        plan = plan_slide(slides["svs"], pred, SlideSettings(num_workers=0, backend="tifffile"))
        frame = [w[0] for w in plan.splitter.windows]
        blocks = SlideWindowDataset(slides["svs"], "tifffile", plan.scale, 64, frame, pred.prepare, plan.splitter.block_span)
        reader, wsi = open_slide(slides["svs"], "tifffile")
        try:
            x, members, _ = blocks[max(range(len(blocks)), key=lambda b: len(blocks.blocks[b]))]
            assert len(members) >= 9  # several overlapping windows from one read
            for k, i in enumerate(members):
                (_, level0, _) = plan.splitter.windows[i]
                rgb = read_rgb_region(reader, wsi, level0, plan.scale.read_size(64), plan.scale.level)
                alone = pred.prepare(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
                if model_mpp == 2 * MPP:
                    torch.testing.assert_close(x[k], alone, atol=1e-6, rtol=0)
                else:
                    inner = (slice(None), slice(2, -2), slice(2, -2))
                    assert (x[k] - alone)[inner].abs().max() < 0.03 and (x[k] - alone).abs().mean() < 0.01
        finally:
            close_slide(wsi)
            blocks.close()


def test_tissue_mask():
    glass = np.full((60, 80, 3), 240, dtype=np.uint8)
    glass[10:30, 20:50] = (180, 90, 160)
    mask, t = tissue_mask(glass)
    inside = np.zeros(mask.shape, dtype=bool)
    inside[10:30, 20:50] = True
    assert mask[12:28, 22:48].all() and not mask[~inside].any() and 0.02 <= t <= 0.15
    pink = np.array([150, 60, 140], dtype=np.uint8)
    all_tissue = np.random.default_rng(0).integers(0, 60, (40, 40, 3), dtype=np.uint8) + pink
    assert tissue_mask(all_tissue)[0].all()  # clamped Otsu does not split tissue-only thumbnails


# ---------------------------------------------------------------- slides end to end


@pytest.mark.parametrize("backend,workers", [("openslide", 1), ("tifffile", 0)])
def test_localize_slide_places_maps_at_the_model_mpp(slides, tmp_path, backend, workers):
    # model at 2 x the slide's mpp: windows read at level 1 (64 px, no resize); DarknessNet's 8 x 8 map of a
    # window is merged at twice its resolution, 16 x 16: 8 level-0 pixels per heat-map pixel
    res = localize_slide(
        slides["svs"], darkness_predictor(), tmp_path, SlideSettings(backend=backend, num_workers=workers), False
    )
    assert res.level == 1 and res.read_size == (64, 64) and res.scale.mpp_source == "slide"
    assert res.heatmap.shape == (128, 96) and res.heatmap_pixel == pytest.approx((8.0, 8.0))
    cell = CELL // 8
    for r in range(4):
        for c in range(3):
            block = (slice(r * cell + 2, (r + 1) * cell - 2), slice(c * cell + 2, (c + 1) * cell - 2))
            if (r, c) in TISSUE_CELLS:
                assert res.tissue[block].mean() > 0.9 and res.covered[block].all(), (r, c)
            else:
                # windows reaching in from tissue neighbours may cover glass; the map calls it background
                assert not res.tissue[block].any() and not res.mask[block].any(), (r, c)
    # DarknessNet's map of level 1 (stride 8, offset 0.53) against the heat map pooled to that grid
    level1 = _pool(slides["level0"], 2)
    expected = 1.0 / (1.0 + np.exp(-10.0 * (_pool(1.0 - level1.mean(axis=-1) / 255.0, 8) - 0.53)))
    heat, cov = _pool(res.heatmap, 2), _pool(res.covered, 2) == 1
    assert np.corrcoef(heat[cov], expected[cov])[0, 1] > 0.95
    rows = list(csv.DictReader(open(res.paths["tiles"], newline="")))
    assert len(rows) == res.tiles_predicted < res.tiles_total
    assert all(int(r["level"]) == 1 and int(r["height"]) == 64 for r in rows)
    assert all(float(r["prob_benign"]) + float(r["prob_malignant"]) == pytest.approx(1.0, abs=1e-5) for r in rows)
    t = res.timings
    assert set(t) == {"tissue", "read_wait", "read_decode_workers", "forward", "merge", "write", "total"}
    assert t["read_decode_workers"] > 0 and t["forward"] > 0


def test_geojson_overlay_and_reduced_heatmap(slides, tmp_path):
    from skimage.draw import polygon as fill_polygon

    pred = darkness_predictor(mpp=MPP)  # level 0, 64 px windows; the heat-map bound, not the map, sets the grid
    res = localize_slide(slides["svs"], pred, tmp_path, SlideSettings(max_heatmap_pixels=128 * 96, num_workers=0), False)
    assert res.heatmap.shape == (128, 96) and res.heatmap_pixel == pytest.approx((8.0, 8.0))
    fc = json.loads(Path(res.paths["geojson"]).read_text())
    assert fc["type"] == "FeatureCollection" and fc["features"]
    drawn = np.zeros((1024, 768), bool)
    for feature in fc["features"]:
        props = feature["properties"]
        assert props["classification"]["name"] == res.class_name
        assert props["prob_malignant"] == pytest.approx(res.probs[1], abs=1e-6)
        ring = np.asarray(feature["geometry"]["coordinates"][0])
        assert (ring >= 0).all() and (ring[:, 0] <= 768).all() and (ring[:, 1] <= 1024).all()  # inside level 0
        rr, cc = fill_polygon(ring[:, 1], ring[:, 0], drawn.shape)
        drawn[rr, cc] = True
    truth = np.zeros((1024, 768), bool)
    for r, c in DARK:
        truth[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = True
    iou = (drawn & truth).sum() / (drawn | truth).sum()
    assert iou > 0.8, iou  # level-0 polygons from a map at 1/8 of level 0 land on the dark cells
    # the overlay is drawn on the slide's overview, at the slide's own size here (smaller than 2048 px), the map
    # upsampled onto it; the heat map stays at its own grid as data
    overlay = np.asarray(Image.open(res.paths["overlay"]))
    assert overlay.shape == (1024, 768, 3) and res.overview_pixel == pytest.approx((1.0, 1.0))
    level0 = slides["level0"].astype(int)
    glass = ~np.repeat(np.repeat(res.covered, 8, axis=0), 8, axis=1)
    heat = np.repeat(np.repeat(res.mask == 1, 8, axis=0), 8, axis=1)
    assert np.abs(overlay[glass].astype(int) - level0[glass]).mean() < 4  # uncovered: the slide itself
    assert np.abs(overlay[heat].astype(int) - level0[heat]).mean() > 30  # heat blended
    small = localize_slide(
        slides["svs"], pred, tmp_path / "small",
        SlideSettings(max_heatmap_pixels=128 * 96, num_workers=0, overview_long_side=512), progress=False,
    )  # fmt: skip
    assert np.asarray(Image.open(small.paths["overlay"])).shape == (512, 384, 3)


def test_overlap_blending_leaves_no_seams(tmp_path):
    """Uniform tissue through a random-init PixelCAMNet: zero padding makes each window's map differ near its
    border. Blended with the default overlap, no seam shows: the largest mean |d heat / dx| over the columns
    where a window starts or ends is no larger than over the other columns. Plain averaging without overlap
    shows the seams: there the border gradient is more than twice the blended one (the check sees seams)."""
    rng = np.random.default_rng(0)
    tissue = np.clip(np.array([190, 110, 170])[None, None] + rng.normal(0, 6, (512, 512, 3)), 0, 255).astype(np.uint8)
    path = write_pyramid_tiff(tmp_path / "uniform.svs", tissue, mpp=0.5, downsamples=(4,), tile=128)
    torch.manual_seed(0)
    window = 64
    pred = PixelCAMPredictor(build_pixelcam(encoder="resnet18_slim", num_classes=2), CLASSES, image_size=window, mpp=0.5)

    def border_and_inside(**kwargs) -> tuple[float, float]:
        res = localize_slide(path, pred, tmp_path / "out", SlideSettings(num_workers=0, **kwargs), progress=False)
        heat = res.heatmap.astype(np.float64)
        assert res.covered.all()
        f = res.heatmap_pixel[1]  # network pixels per heat-map pixel (the model is at the slide's mpp)
        size, stride = round(window / f), round(window * (1 - kwargs.get("overlap", 0.5)) / f)
        per_col = np.abs(np.diff(heat, axis=1))[size:-size].mean(axis=0)  # between columns j and j+1
        edges = {s for k in range(0, heat.shape[1], stride) for s in (k, k + size)}
        cols = np.arange(size, heat.shape[1] - size - 1)
        border = np.isin(cols + 1, list(edges))
        return per_col[cols][border].max(), per_col[cols][~border].max()

    border, inside = border_and_inside()  # the defaults: overlap 0.5, Gaussian blending
    assert border <= inside, (border, inside)
    seam, _ = border_and_inside(overlap=0.0, blend="constant")
    assert seam > 2 * border, (seam, border)


# ---------------------------------------------------------------- folders and ranks


def test_folder_with_slides_corrupt_and_unsupported_files(slides, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "good.svs").write_bytes(Path(slides["svs"]).read_bytes())
    (src / "corrupt.svs").write_bytes(b"II*\x00" + os.urandom(500))
    (src / "slide.mrxs").write_bytes(b"not a mirax slide")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(src / "small.png")
    report = localize_folder(src, out, darkness_predictor(), slide={"num_workers": 0}, progress=False)
    assert report["processed"] == ["good.svs", "small.png"]
    assert sorted(report["failed"]) == ["corrupt.svs", "slide.mrxs"]
    for name, message in report["failed"].items():
        assert name in message and "cannot open as a whole-slide image" in message
    kinds = {r["image"]: r["kind"] for r in csv.DictReader(open(out / "predictions.csv", newline=""))}
    assert kinds == {"good.svs": "slide", "small.png": "image"}
    errors = list(csv.DictReader(open(out / "errors.csv", newline="")))
    assert sorted(e["image"] for e in errors) == ["corrupt.svs", "slide.mrxs"]
    for suffix in ("heatmap.png", "mask.png", "overlay.png", "tissue.png", "regions.geojson", "tiles.csv"):
        assert (out / f"good_{suffix}").is_file(), suffix
    for suffix in ("heatmap.png", "mask.png", "overlay.png", "regions.geojson"):
        assert (out / f"small_{suffix}").is_file(), suffix


def _sharded_run(src: str, out: str, log_dir: str) -> list[str]:
    """One rank of the torchrun job: log to its own file, localize the folder."""
    handler = logging.FileHandler(Path(log_dir) / f"rank{os.environ['RANK']}.log")
    package_logger = logging.getLogger("monai_pixelcam")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return localize_folder(src, out, darkness_predictor(), slide={"num_workers": 0}, progress=False)[
            "processed"
        ]
    finally:
        package_logger.removeHandler(handler)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_shard_the_folder(slides, tmp_path):
    """torchrun's launcher (``elastic_launch``, what the ``torchrun`` command runs) with two CPU ranks; the
    workers are forked so that they share this process's imports (a fresh interpreter imports MONAI for ~7 s
    of CPU). ``localize_folder`` starts the gloo group from torchrun's environment itself."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for k in range(2):
        (src / f"slide{k}.svs").write_bytes(Path(slides["svs"]).read_bytes())
        Image.fromarray(np.full((32, 48, 3), 90 + 60 * k, np.uint8)).save(src / f"tile{k}.png")
    (src / "corrupt.svs").write_bytes(b"II*\x00" + os.urandom(300))
    (src / "notes.txt").write_text("not an image")
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=2, run_id="wsi", rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0, monitor_interval=0.1, start_method="fork",
    )
    returned = elastic_launch(config, _sharded_run)(str(src), str(out), str(tmp_path))
    logs = {rank: (tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)}
    # sorted inputs corrupt.svs, notes.txt, slide0.svs, slide1.svs, tile0.png, tile1.png: rank r takes r, r + 2, ...
    shards = {0: ["corrupt.svs", "slide0.svs", "tile0.png"], 1: ["notes.txt", "slide1.svs", "tile1.png"]}
    for rank, names in shards.items():
        assert f"rank {rank}/2: 3 of 6 file(s)" in logs[rank]
        for name in names[1:]:  # the processed ones
            assert f"rank {rank}: {name}: " in logs[rank] and f": {name}: " not in logs[1 - rank]
    assert "corrupt.svs" in logs[0] and "corrupt.svs" not in logs[1]
    # every rank returns the merged report; rank 0 alone wrote the merged CSVs
    expected = ["slide0.svs", "slide1.svs", "tile0.png", "tile1.png"]
    assert returned == {0: expected, 1: expected}
    predictions = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    assert [p["image"] for p in predictions] == expected
    errors = list(csv.DictReader(open(out / "errors.csv", newline="")))
    assert [(e["image"], e["status"]) for e in errors] == [("corrupt.svs", "failed"), ("notes.txt", "skipped")]
    assert "processed" in logs[0] and "processed" not in logs[1]
    for stem in ("slide0", "slide1"):
        assert (out / f"{stem}_regions.geojson").is_file() and (out / f"{stem}_overlay.png").is_file()
    assert not [p for p in out.iterdir() if ".tmp." in p.name]
