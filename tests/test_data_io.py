"""Image / mask reading, the MONAI loading transforms, and the datalist validator."""

from __future__ import annotations

import pickle
import runpy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from monai_pixelcam.data import (
    DatalistError,
    datalist_mpp,
    load_datalist,
    LoadHistologyd,
    LoadHistologyImage,
    LoadHistologyMask,
    read_mask,
    read_rgb,
    save_datalist,
    validate_datalist,
)
from monai_pixelcam.atomic import write_png_atomic
from monai_pixelcam.data.io import HistologyReader, ImageTooLargeError, image_size, read_csv_table
from monai_pixelcam.data.validate import main as validate_main
from monai_pixelcam.data.validate import mask_problem

H, W = 12, 20  # non-square, so a transposed read would show


def _rgb(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blob_mask(h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    m[2:7, 3:12] = 1
    return m


def _raises_naming(path, fn, *args):
    with pytest.raises(DatalistError) as e:
        fn(*args)
    assert str(path) in str(e.value)
    # no chained PIL / numpy traceback under the error
    assert e.value.__cause__ is None and (e.value.__suppress_context__ or e.value.__context__ is None)
    return e.value


# ---------------------------------------------------------------- read_rgb


def test_read_rgb_png_roundtrip_keeps_orientation(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, rgb)


def test_read_rgb_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    Image.fromarray(gray > 127).save(tmp_path / "b.bmp")  # 1-bit
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(read_rgb(tmp_path / "b.bmp")[..., 1], (gray > 127) * 255)


def test_read_rgb_rgba_is_composited_on_white(tmp_path):
    rgb = _rgb()
    alpha = np.full((H, W), 255, np.uint8)
    alpha[0, :] = 0
    alpha[1, :] = 128
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.shape == (H, W, 3)
    np.testing.assert_array_equal(out[2:], rgb[2:])  # opaque: unchanged
    np.testing.assert_array_equal(out[0], 255)  # transparent: white background
    expected = np.round(rgb[1].astype(np.float32) * (128 / 255) + 255 * (1 - 128 / 255))
    np.testing.assert_allclose(out[1], expected, atol=1)


def test_read_rgb_palette_16bit_cmyk_and_float_tiff(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    pal = read_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(pal, np.asarray(Image.open(tmp_path / "p.png").convert("RGB")))

    g16 = np.zeros((H, W), np.uint16)
    g16[:, 1], g16[:, 2] = 65535, 257 * 100
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out = read_rgb(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[0, 2, 0] == 100

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "c.tif"), rgb)

    # PIL cannot open 3-sample float TIFFs: the tifffile fallback reads them
    tifffile.imwrite(tmp_path / "f.tif", (rgb / 255.0).astype(np.float32))
    np.testing.assert_array_equal(read_rgb(tmp_path / "f.tif"), rgb)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb16.tif"), rgb)
    # 12-bit samples in a 16-bit TIFF (a scanner's or camera's): scaled by 4095, not read as near-black
    rgb12 = np.round(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    rgb12[0, 0] = 4095
    tifffile.imwrite(tmp_path / "rgb12.tif", rgb12)
    expected = np.round(rgb12 * (255 / 4095)).astype(np.uint8)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgb12.tif"), expected)
    assert read_rgb(tmp_path / "rgb12.tif").max() == 255


def test_read_rgb_bad_files_raise_datalist_error_naming_the_file(tmp_path):
    Image.fromarray(_rgb(h=64, w=64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    (tmp_path / "empty.bmp").write_bytes(b"")
    (tmp_path / "text.tif").write_text("not an image")
    for name in ("trunc.png", "random.png", "empty.bmp", "text.tif", "missing.png"):
        err = _raises_naming(tmp_path / name, read_rgb, tmp_path / name)
        assert len(err.problems) == 1
    _raises_naming(tmp_path, read_rgb, tmp_path)  # a folder


# ---------------------------------------------------------------- read_mask


def test_read_mask_binary_codings_and_instance_ids(tmp_path):
    m = _blob_mask()
    ids = m.copy()
    ids[8:11, 14:18] = 7  # a second instance
    Image.fromarray(m * 255).save(tmp_path / "m255.png")
    Image.fromarray(m).save(tmp_path / "m01.bmp")
    Image.fromarray(ids).save(tmp_path / "ids.bmp")
    Image.fromarray(m.astype(bool)).save(tmp_path / "bool.png")
    Image.fromarray(np.dstack([m * 200, m * 0, m * 30])).save(tmp_path / "rgb.png")
    for name in ("m255.png", "m01.bmp", "bool.png", "rgb.png"):
        out = read_mask(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (H, W)
        np.testing.assert_array_equal(out, m, err_msg=name)
    np.testing.assert_array_equal(read_mask(tmp_path / "ids.bmp"), (ids > 0).astype(np.uint8))


def test_read_mask_palette_index_alpha_and_float(tmp_path):
    m = _blob_mask()
    p = Image.fromarray(m * 3, mode="L").convert("P")
    p.putpalette([255, 255, 255] + [0, 0, 0] * 255)  # index 0 shown white: the index still rules
    p.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "pal.png"), m)

    rgba = np.dstack([np.full((H, W, 3), 255, np.uint8), m * 255])  # white everywhere, alpha = mask
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), m)

    soft = m * 0.8 + 0.1
    tifffile.imwrite(tmp_path / "soft.tif", soft.astype(np.float32))
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.tif"), m)
    np.testing.assert_array_equal(read_mask(tmp_path / "soft.tif", threshold=0.05), np.ones_like(m))


def test_read_mask_bad_file(tmp_path):
    (tmp_path / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _raises_naming(tmp_path / "m.png", read_mask, tmp_path / "m.png")


def test_write_png_atomic(tmp_path):
    rgb = _rgb()
    write_png_atomic(tmp_path / "sub" / "a.png", rgb)
    write_png_atomic(tmp_path / "m.png", _blob_mask().astype(bool))
    np.testing.assert_array_equal(read_rgb(tmp_path / "sub" / "a.png"), rgb)
    assert np.asarray(Image.open(tmp_path / "m.png")).max() == 255
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "m.png"]
    with pytest.raises(ValueError, match="x.png"):
        write_png_atomic(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "x.png").exists()


def test_write_png_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that fails half way leaves the previous file whole and no temporary behind."""
    target = tmp_path / "a.png"
    write_png_atomic(target, _rgb())
    before = target.read_bytes()

    def half_written(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_png_atomic(target, np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"], "no temporary file is left behind"


def test_read_csv_table_strips_headers_and_values(tmp_path):
    (tmp_path / "t.csv").write_text("\ufeffname , Patient  ID,grade\n\n a_1 , 4, benign \nb_2,5\n")
    rows = read_csv_table(tmp_path / "t.csv")
    assert rows == [
        {"name": "a_1", "patient id": "4", "grade": "benign", "_line": "3"},
        {"name": "b_2", "patient id": "5", "grade": "", "_line": "4"},
    ]
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    _raises_naming(tmp_path / "bad.csv", read_csv_table, tmp_path / "bad.csv")


# ---------------------------------------------------------------- transforms


def _write_pair(tmp_path, name, seed=0, h=H, w=W):
    Image.fromarray(_rgb(seed, h, w)).save(tmp_path / f"{name}.png")
    Image.fromarray(_blob_mask(h, w) * 255).save(tmp_path / f"{name}_mask.png")
    return str(tmp_path / f"{name}.png"), str(tmp_path / f"{name}_mask.png")


def test_array_loaders(tmp_path):
    img, mask = _write_pair(tmp_path, "a")
    x = LoadHistologyImage()(img)
    assert x.shape == (3, H, W) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy() * 255, _rgb(0), atol=1e-3)
    assert x.meta["filename_or_obj"] == img
    m = LoadHistologyMask()(mask)
    assert m.shape == (1, H, W) and m.dtype == torch.float32
    np.testing.assert_array_equal(m[0].numpy(), _blob_mask())



def test_loaders_are_monai_load_image_with_pil_reader_rows_kept(tmp_path):
    """On a plain RGB PNG our loader is MONAI's LoadImaged + PILReader(reverse_indexing=False), scaled to [0, 1]."""
    from monai.data import PILReader
    from monai.transforms import LoadImaged

    img, mask = _write_pair(tmp_path, "a")
    monai = LoadImaged("image", reader=PILReader(reverse_indexing=False), ensure_channel_first=True)({"image": img})
    ours = LoadHistologyd(keys=("image", "mask"))({"image": img, "mask": mask})
    assert isinstance(HistologyReader(), PILReader) and not HistologyReader().reverse_indexing
    assert torch.equal(ours["image"].as_tensor(), monai["image"].as_tensor() / 255.0)
    for key in ("image", "mask"):
        assert ours[key].meta["filename_or_obj"] == (img if key == "image" else mask)
        assert ours[key].meta["spatial_shape"].tolist() == [H, W]  # data order, not PIL's (width, height)


def test_loaders_keep_the_conversion_rules_and_name_bad_files(tmp_path):
    rgb = _rgb()
    rgba = np.dstack([rgb, np.full((H, W), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")  # composited on white
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb.astype(np.uint16) * 257)  # 16-bit, PIL cannot: tifffile
    ids = np.zeros((H, W), np.uint8)
    ids[1:4, 2:6], ids[6:9, 10:15] = 1, 7
    pal = Image.fromarray(ids, "P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0, 0, 0] * 254)  # index 7 is black: read by index, not colour
    pal.save(tmp_path / "pal.png")
    load = LoadHistologyd(keys=("image", "mask"))
    for name in ("rgba.png", "rgb16.tif"):
        d = load({"image": str(tmp_path / name), "mask": str(tmp_path / "pal.png")})
        expected = read_rgb(tmp_path / name).transpose(2, 0, 1).astype(np.float32) / 255.0
        np.testing.assert_array_equal(d["image"].numpy(), expected)
        np.testing.assert_array_equal(d["mask"][0].numpy(), ids > 0)
    (tmp_path / "bad.png").write_bytes(np.random.default_rng(0).bytes(300))
    for item in ({"image": str(tmp_path / "bad.png"), "mask": None}, {"image": str(tmp_path / "rgba.png"),
                                                                       "mask": str(tmp_path / "gone.png")}):
        bad = item["mask"] or item["image"]
        _raises_naming(bad, load, item)  # our DatalistError, not LoadImage's "cannot find a suitable reader"
        _raises_naming(bad, (LoadHistologyMask() if item["mask"] else LoadHistologyImage()), bad)

def test_dictionary_loader_empty_masks_and_size_check(tmp_path):
    img, mask = _write_pair(tmp_path, "a")
    load = LoadHistologyd(keys=("image", "mask"))
    d = load({"image": img, "mask": mask, "label": 1, "id": "a"})
    assert d["image"].shape == (3, H, W) and d["mask"].shape == (1, H, W) and d["label"] == 1
    for item in ({"image": img, "mask": None, "id": "b"}, {"image": img, "id": "c"}):
        out = load(item)
        assert out["mask"].shape == (1, H, W) and float(out["mask"].abs().sum()) == 0.0
    assert load(d)["image"] is d["image"]  # already loaded: left as is
    _, small = _write_pair(tmp_path, "small", h=H + 2)
    with pytest.raises(DatalistError, match="'mask' is"):
        load({"image": img, "mask": small, "id": "mismatch"})
    with pytest.raises(DatalistError, match="nope.png"):
        load({"image": str(tmp_path / "nope.png"), "mask": None})


def test_dictionary_loader_in_dataset_and_dataloader_workers(tmp_path):
    items = []
    for i in range(4):
        img, mask = _write_pair(tmp_path, f"p{i}", seed=i)
        items.append({"image": img, "mask": mask if i % 2 else None, "label": i % 2, "id": f"p{i}"})
    load = LoadHistologyd(keys=("image", "mask"))
    assert isinstance(pickle.loads(pickle.dumps(load)), LoadHistologyd)
    loader = DataLoader(Dataset(items, transform=load), batch_size=4, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, H, W) and batch["mask"].shape == (4, 1, H, W)
    assert batch["mask"][0].sum() == 0 and batch["mask"][1].sum() == _blob_mask().sum()
    assert batch["label"].tolist() == [0, 1, 0, 1]


# ---------------------------------------------------------------- mask_problem


def test_mask_problem_rule():
    m = _blob_mask(64, 64)
    ids = m.copy()
    ids[40:50, 40:60] = 2
    ids[10:20, 40:50] = 3
    assert mask_problem(m) is None and mask_problem(m * 255) is None and mask_problem(m.astype(bool)) is None
    assert mask_problem(ids) is None and mask_problem(ids.astype(np.uint16)) is None
    # a soft map quantised to 16 levels is piecewise constant too, but its values are not ids 1..K: read as a
    # label map almost every pixel would be foreground
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    assert "must be thresholded" in mask_problem(np.round(ramp * 15).astype(np.uint8) * 17)
    assert "must be thresholded" in mask_problem(ids.astype(np.uint16) * 1000)
    assert mask_problem(np.zeros((8, 8), np.uint8)) is None and mask_problem(np.full((8, 8), 255, np.uint8)) is None
    assert mask_problem(np.dstack([m * 255, m * 0, m * 255])) is None
    assert mask_problem(np.float32(m) * 0.7 + 0.2) is None
    photo = _rgb(3, 64, 64)
    assert "not a binary mask or a label map" in mask_problem(photo)
    assert "not a binary mask or a label map" in mask_problem(photo[..., 0])
    assert "no background value 0" in mask_problem(m + 1)
    assert "[0, 2]" in mask_problem(np.float32(m) * 2)
    assert "NaN" in mask_problem(np.full((4, 4), np.nan, np.float32))
    alpha = np.dstack([photo, np.zeros((64, 64), np.uint8)])
    assert mask_problem(alpha, has_alpha=True) is None  # fully transparent: empty


# ---------------------------------------------------------------- validate_datalist


def _dataset(tmp_path, n=2):
    """A valid 2-class datalist with n items per split, written as PNGs."""
    dl = {"classes": ["a", "b"], "negative_classes": [], "train": [], "valcl": [], "valpx": [], "test": []}
    k = 0
    for split in ("train", "valcl", "valpx", "test"):
        for _ in range(n):
            img, mask = _write_pair(tmp_path, f"i{k}", seed=k)
            dl[split].append({"image": img, "mask": mask, "label": k % 2, "id": f"i{k}"})
            k += 1
    return dl


def test_class_coverage_is_checked_before_a_run(tmp_path):
    """A train split without a class, or a valpx/test split without an image with a region of interest, is
    refused before training (the run would otherwise fail at its end); a test split without one class is
    taken, and that class's figures are reported as absent."""
    dl = _dataset(tmp_path, n=2)
    validate_datalist({**dl, "test": dl["test"][:1]})  # test holds class 'a' only: allowed
    with pytest.raises(DatalistError, match=r"train has no image of class\(es\) \['b'\]"):
        validate_datalist({**dl, "train": [it for it in dl["train"] if it["label"] == 0]})
    with pytest.raises(DatalistError, match="test has no image of a class with a region of interest"):
        validate_datalist({**dl, "negative_classes": [0], "test": [it for it in dl["test"] if it["label"] == 0]})


def test_validate_accepts_valid_datalist_and_json_path(tmp_path):
    dl = _dataset(tmp_path)
    validate_datalist(dl)
    path = save_datalist(dl, tmp_path / "dl.json")
    validate_datalist(path)
    assert validate_main([str(path)]) == 0


@pytest.mark.parametrize(
    "case",
    [
        "corrupt", "truncated", "missing", "size", "nonbinary",
        "label", "label_type", "empty", "dup", "keys", "valpx_mask", "mpp",
    ],
)
def test_validate_single_problem_named(tmp_path, case):
    dl = _dataset(tmp_path)
    item = dl["train"][1]
    named = item["image"]
    if case == "corrupt":
        (tmp_path / "i1.png").write_bytes(np.random.default_rng(1).bytes(300))
    elif case == "truncated":
        data = (tmp_path / "i1.png").read_bytes()
        (tmp_path / "i1.png").write_bytes(data[: len(data) - 40])
    elif case == "missing":
        (tmp_path / "i1.png").unlink()
    elif case == "size":
        _, named = _write_pair(tmp_path, "big", h=H + 4)
        item["mask"] = named
    elif case == "nonbinary":
        Image.fromarray(_rgb(9)).save(tmp_path / "photo.png")
        item["mask"] = named = str(tmp_path / "photo.png")
    elif case == "label":
        item["label"], named = 2, "label 2 outside range(2)"
    elif case == "label_type":
        item["label"], named = "b", "label must be an int"
    elif case == "empty":
        dl["valcl"], named = [], "split 'valcl' is empty"
    elif case == "dup":
        item["id"], named = "i0", "duplicate id 'i0'"
    elif case == "keys":
        del item["label"]
        named = "missing key(s) ['label']"
    elif case == "valpx_mask":
        dl["valpx"][0]["mask"], named = None, "valpx items need a mask"
    elif case == "mpp":
        item["mpp"], named = -0.5, "'mpp' must be a positive number of microns per pixel (or null), got -0.5"
    with pytest.raises(DatalistError) as e:
        validate_datalist(dl)
    assert len(e.value.problems) == 1, e.value.problems
    assert named in e.value.problems[0]
    if case not in ("empty", "valpx_mask"):
        assert e.value.problems[0].startswith("train[1]")


def test_validate_lists_all_problems_at_once(tmp_path, capsys):
    dl = _dataset(tmp_path, n=3)
    (tmp_path / "i0.png").write_bytes(b"garbage")  # corrupt image
    dl["train"][1]["label"] = 5  # label out of range
    _, big = _write_pair(tmp_path, "big", h=H + 1)
    dl["valcl"][0]["mask"] = big  # size mismatch
    Image.fromarray(_rgb(7)[..., 1]).save(tmp_path / "gray_photo.png")
    dl["test"][2]["mask"] = str(tmp_path / "gray_photo.png")  # not a mask
    dl["test"][0]["image"] = str(tmp_path / "gone.png")  # missing
    dl["valpx"].clear()  # empty split
    with pytest.raises(DatalistError) as e:
        validate_datalist(dl)
    problems = e.value.problems
    assert len(problems) == 6, problems
    text = str(e.value)
    for needle in ("i0.png", "label 5", "big_mask.png", "gray_photo.png", "gone.png", "'valpx' is empty"):
        assert needle in text
    # masks unchecked: only the file-free problems and the image problems remain
    with pytest.raises(DatalistError) as e2:
        validate_datalist(dl, check_masks=False)
    assert len(e2.value.problems) == 4
    # only some splits
    with pytest.raises(DatalistError) as e3:
        validate_datalist(dl, splits=("valcl",))
    assert len(e3.value.problems) == 1 and "big_mask.png" in e3.value.problems[0]

    path = save_datalist(dl, tmp_path / "bad.json")
    assert validate_main([str(path)]) == 1
    assert "gray_photo.png" in capsys.readouterr().err


def test_validate_negative_class_may_omit_mask_and_same_image_twice(tmp_path):
    dl = _dataset(tmp_path)
    dl["negative_classes"] = [0]
    dl["test"][0]["mask"] = None  # label 0: negative, allowed
    validate_datalist(dl)
    dl["test"][1]["image"] = dl["train"][0]["image"]
    with pytest.raises(DatalistError, match="listed twice"):
        validate_datalist(dl)


def _run_module(module, args, monkeypatch):
    """``python -m module args`` in this process (a subprocess would pay MONAI's import again)."""
    monkeypatch.setattr(sys, "argv", [module, *map(str, args)])
    with pytest.raises(SystemExit) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "found in sys.modules": imported by the tests
        runpy.run_module(module, run_name="__main__")
    return e.value.code


def test_validate_cli_entry_point(tmp_path, monkeypatch, capsys):
    path = save_datalist(_dataset(tmp_path, n=2), tmp_path / "dl.json")
    assert _run_module("monai_pixelcam.data.validate", [path], monkeypatch) == 0
    assert "OK" in capsys.readouterr().out
    (tmp_path / "i0.png").write_bytes(b"x")
    assert _run_module("monai_pixelcam.data.validate", [path, "--splits", "train"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "i0.png" in err and "Traceback" not in err


# ---------------------------------------------------------------- datalist scale (mpp)


def _scaled(train_mpps, dataset_mpp=None):
    dl = {"classes": ["a", "b"], "negative_classes": [], "valcl": [], "valpx": [], "test": []}
    if dataset_mpp is not None:
        dl["mpp"] = dataset_mpp
    dl["train"] = [{"image": f"i{i}.png", "mask": None, "label": 0, "id": f"i{i}"} for i in range(len(train_mpps))]
    for it, mpp in zip(dl["train"], train_mpps):
        if mpp is not None:
            it["mpp"] = mpp
    return dl


def test_datalist_mpp_dataset_items_and_disagreement():
    assert datalist_mpp(_scaled([None, None])) is None  # nothing says: unknown
    assert datalist_mpp(_scaled([None, None], dataset_mpp=0.5)) == 0.5
    assert datalist_mpp(_scaled([0.25, None], dataset_mpp=0.25)) == 0.25  # an item may repeat the dataset's
    assert datalist_mpp(_scaled([0.2425, 0.2428, 0.243])) == pytest.approx(0.2428)  # one objective, median
    assert datalist_mpp(_scaled([1.0, 1.0], dataset_mpp=0.5)) == 1.0  # items override the dataset
    assert datalist_mpp({**_scaled([None]), "valcl": [{"id": "v", "mpp": 2.0}]}, split="valcl") == 2.0
    with pytest.raises(DatalistError, match=r"2 different scales: 0\.25 um/px \(train\[0\] \(id 'i0'\)\), 0\.5 um/px"):
        datalist_mpp(_scaled([0.25, None], dataset_mpp=0.5))
    with pytest.raises(DatalistError, match=r"1 train image\(s\) have no 'mpp' \(e\.g\. train\[1\] \(id 'i1'\)\)"):
        datalist_mpp(_scaled([0.5, None]))
    with pytest.raises(DatalistError, match=r"train\[0\] \(id 'i0'\): 'mpp' must be a positive number"):
        datalist_mpp(_scaled([0.0]))


@pytest.mark.parametrize("bad", [0, -1.0, "0.5", True, float("nan"), float("inf"), [0.5]])
def test_load_datalist_rejects_bad_mpp_naming_file_and_item(tmp_path, bad):
    import json

    good = _scaled([0.5, None], dataset_mpp=0.5)
    (tmp_path / "ok.json").write_text(json.dumps(good))
    assert load_datalist(tmp_path / "ok.json")["train"][0]["mpp"] == 0.5
    for where, data in (("'mpp'", {**good, "mpp": bad}), ("train[1] (id 'i1'): 'mpp'", _scaled([0.5, bad]))):
        (tmp_path / "bad.json").write_text(json.dumps(data, allow_nan=True))
        with pytest.raises(DatalistError) as e:
            load_datalist(tmp_path / "bad.json")
        assert e.value.problems == [
            f"{tmp_path / 'bad.json'}: {where} must be a positive number of microns per pixel (or null), got {bad!r}"
        ]


def test_images_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200), np.uint8)).save(path)
    assert image_size(path) == (300, 200)
    assert read_rgb(path, max_pixels=60_000).shape == (300, 200, 3)
    for read in (lambda: read_rgb(path, max_pixels=59_999), lambda: HistologyReader(max_pixels=59_999).read(path)):
        with pytest.raises(ImageTooLargeError, match="big.png: 200 x 300 pixels is more than the 59999 pixels"):
            read()
    assert read_rgb(path, max_pixels=None).shape == (300, 200, 3)
    (tmp_path / "text.png").write_text("not an image")
    assert image_size(tmp_path / "text.png") is None
