"""MONAI Label WSI answers without a server: tiles of a region, contours in level-0 pixels, the DSA and ASAP
files of MONAI Label's own writers, and image ids resolved through the datastore only."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("monailabel") is None:
    pytest.skip("monailabel is not installed (see README, MONAI Label)", allow_module_level=True)

import tifffile  # noqa: E402
from monailabel.config import settings  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.draw import disk, polygon2mask  # noqa: E402

from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from monai_pixelcam.label.access import request_scope, resolve_image  # noqa: E402
from monai_pixelcam.label.annotation import LABEL_COLOR, region_annotation, write_annotations  # noqa: E402
from monai_pixelcam.label.errors import RequestError  # noqa: E402
from monai_pixelcam.label.app import PixelCAMApp  # noqa: E402
from monai_pixelcam.label.wsi_infer import plan_tiles  # noqa: E402
from test_label_app import REPO, write_model  # noqa: E402


def downsample2(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    return rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8)


def write_aperio_tiff(path: Path, level0: np.ndarray, mpp: float = 0.5, tile: int = 64, levels: int = 3) -> Path:
    """A JPEG-compressed pyramidal TIFF laid out as Aperio writes ``.svs`` files: tiled level 0 with an
    Aperio ``ImageDescription`` (``AppMag``, ``MPP``), a stripped thumbnail page, then the tiled reduced
    levels (OpenSlide reads it as vendor ``aperio``, tifffile as an SVS series of ``levels`` levels)."""
    pyramid = [level0]
    for _ in range(levels - 1):
        pyramid.append(downsample2(pyramid[-1]))
    h, w = level0.shape[:2]
    head = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
    meta = f"|AppMag = 20|MPP = {mpp}"
    jpeg = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": 90}, "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(pyramid[0], tile=(tile, tile), description=head + meta, **jpeg)
        tif.write(pyramid[-1], description=f"Aperio Image Library v12.0.0\r\n{w}x{h} -> thumbnail{meta}", **jpeg)
        for level in pyramid[1:]:
            tif.write(level, tile=(tile, tile), description=head + meta, **jpeg)
    return path


# --- tiles ---------------------------------------------------------------------------------------------
def test_plan_tiles_cover_the_region_at_the_level_read():
    tiles = plan_tiles({"location": [10, 20], "size": [150, 70], "tile_size": [64, 64]}, 200, 100)
    assert [t["location"] for t in tiles] == [[10, 20], [74, 20], [138, 20], [10, 84], [74, 84], [138, 84]]
    assert [t["size"] for t in tiles] == [[64, 64], [64, 64], [22, 64], [64, 6], [64, 6], [22, 6]]
    # level 1 (downsample 2): a 64 px tile spans 128 level-0 px; the region is cut at the image's border
    tiles = plan_tiles({"location": [0, 0], "size": [500, 100], "tile_size": 64}, 200, 100, downsample=2.0)
    assert [(t["location"], t["size"]) for t in tiles] == [([0, 0], [64, 50]), ([128, 0], [36, 50])]
    # the DSA plugin's "-1,-1,-1,-1": the whole image
    whole = plan_tiles({"location": [-1, -1], "size": [-1, -1], "tile_size": [128, 128]}, 200, 100)
    assert [(t["location"], t["size"]) for t in whole] == [([0, 0], [128, 100]), ([128, 0], [72, 100])]
    listed = plan_tiles({"wsi_tiles": [{"location": [100, 50], "size": [64, 64]}]}, 200, 100)
    assert listed == [{"location": [100, 50], "size": [64, 50]}]
    for bad, word in (
        ({"location": [300, 0], "size": [10, 10]}, "outside"),
        ({"location": [0, 0], "size": [10, 10], "tile_size": [0, 8]}, "tile_size"),
        ({"wsi_tiles": [{"location": [0, 0]}]}, "wsi_tiles[0].size"),
        ({"wsi_tiles": "all"}, "wsi_tiles"),
    ):
        with pytest.raises(RequestError) as e:
            plan_tiles(bad, 200, 100)
        assert e.value.status_code == 400 and word in e.value.detail, bad


# --- contours and writers ------------------------------------------------------------------------------
def rasterise(contours, shape, origin=(0.0, 0.0), scale=1.0) -> np.ndarray:
    """Union of contours (level-0 ``(x, y)``) on a grid of ``shape`` whose pixel ``(r, c)`` centre lies at
    level-0 ``origin + (c + 0.5, r + 0.5) * scale``."""
    out = np.zeros(shape, dtype=bool)
    for ring in contours:
        xy = (np.asarray(ring, dtype=float) - origin) / scale - 0.5
        out |= polygon2mask(shape, xy[:, ::-1])
    return out


def test_region_annotation_in_level0_pixels():
    score = np.zeros((40, 60), np.float32)
    score[disk((20, 25), 12)] = 0.9
    score[disk((5, 55), 1.5)] = 0.9  # a speck of 9 map px = 36 level-0 px at downsample 2
    score[30:, 50:] = 0.8  # touches the border: traced up to half a map pixel outside, then clamped
    annotation = region_annotation(score, 0.5, (1000, 400), downsample=2.0, min_poly_area=60)
    assert annotation["location"] == [1000, 400] and annotation["size"] == [120, 80]
    assert annotation["labels"] == {"roi": list(LABEL_COLOR)}
    (element,) = annotation["elements"]
    contours = element["contours"]
    assert element["label"] == "roi" and len(contours) == 2  # the speck is below min_poly_area
    points = np.concatenate([np.asarray(c) for c in contours])
    assert points[:, 0].min() >= 1000 and points[:, 0].max() <= 1120
    assert points[:, 1].min() >= 400 and points[:, 1].max() <= 480
    raster = rasterise(contours, score.shape, origin=(1000, 400), scale=2.0)
    truth = score >= 0.5
    truth[disk((5, 55), 1.5)] = False
    iou = (raster & truth).sum() / (raster | truth).sum()
    assert iou > 0.93, iou
    assert region_annotation(np.zeros((8, 8)), 0.5, (0, 0))["elements"] == []
    with pytest.raises(ValueError, match="threshold"):
        region_annotation(score, 0.0, (0, 0))


def _result(contours, description="PixelCAM roi: class benign 0.800") -> dict:
    annotation = {"location": [0, 0], "size": [64, 64], "labels": {"roi": list(LABEL_COLOR)}}
    annotation["elements"] = [{"label": "roi", "contours": contours}]
    return {
        "name": "MONAILabel Annotations - pixelcam for [0, 0, 64, 64]",
        "description": description,
        "model": "pixelcam",
        "location": [0, 0],
        "size": [64, 64],
        "latencies": {"total": 0.1},
        "annotations": [{"annotation": annotation}],
    }


def test_dsa_json_and_asap_xml_from_monailabel_writers():
    square = [[10.0, 10.0], [30.0, 10.0], [30.0, 30.0], [10.0, 30.0], [10.0, 10.0]]
    description = 'PixelCAM roi: class "benign" <0.8> & more'
    files = [write_annotations(_result([square]), output) for output in ("dsa", "asap")]
    try:
        dsa = json.loads(Path(files[0]).read_text())
        (element,) = dsa["elements"]
        assert element["type"] == "polyline" and element["closed"] and element["label"] == {"value": "roi"}
        assert element["lineColor"] == "rgb(0,255,0)" and [p[:2] for p in element["points"]] == square
        assert json.loads(dsa["description"])["count"] == 1
        asap = ET.parse(files[1]).getroot()
        (annotation,) = asap.iter("Annotation")
        assert annotation.get("Name") == "roi" and annotation.get("Color") == "#00ff00"
        points = [[float(c.get("X")), float(c.get("Y"))] for c in annotation.iter("Coordinate")]
        assert points == square
    finally:
        for f in files:
            os.remove(f)
    # quotes and brackets in a description (class names come from the user) keep the XML well formed
    quoted = write_annotations(_result([square], description), "asap")
    try:
        assert ET.parse(quoted).getroot().find("Annotations").get("Description") == description
    finally:
        os.remove(quoted)
    assert write_annotations(_result([square]), "json") is None
    with pytest.raises(ValueError, match="output"):
        write_annotations(_result([square]), "geojson")


# --- image ids -------------------------------------------------------------------------------------------
def test_image_ids_resolve_through_the_datastore_only(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(studies / "tile_a.png")
    outside = tmp_path / "other.png"
    shutil.copy(studies / "tile_a.png", outside)
    store = LocalDatastore(str(studies), extensions=["*.png"], auto_reload=False)
    assert resolve_image("tile_a", store) == os.path.realpath(studies / "tile_a.png")
    ids = [
        str(outside),  # an image outside the datastore
        str(studies / "tile_a.png"),  # a datastore image named by its path instead of its id
        "../other",
        "../../../../etc/passwd",
        "/etc/passwd",
        "%2e%2e%2fother",
        "no_such_image",
    ]
    details = set()
    for image in ids:
        with pytest.raises(RequestError) as e:
            resolve_image(image, store)
        assert e.value.status_code == 404
        details.add(e.value.detail.replace(repr(image), "ID"))
    assert len(details) == 1, details  # the same answer whether or not such a file exists

    # an upload as MONAI Label's endpoint stores it during the request, and a session image, are the
    # request's own files; a file with an upload's name that was there before the request is not
    placed = tempfile.NamedTemporaryFile(suffix=".png").name
    shutil.copy(outside, placed)
    sessions = tmp_path / "sessions"
    (sessions / "abc").mkdir(parents=True)
    shutil.copy(outside, sessions / "abc" / "image.png")
    link = Path(tempfile.gettempdir()) / f"tmp{os.urandom(4).hex()}.png"
    upload = tempfile.NamedTemporaryFile(suffix=".png").name
    try:
        with request_scope():
            os.symlink("/etc/passwd", link)
            shutil.copy(outside, upload)
            assert resolve_image(upload, store) == upload
            assert resolve_image(str(sessions / "abc" / "image.png"), store, str(sessions))
            for image in (placed, str(link), str(sessions / ".." / "other.png")):
                with pytest.raises(RequestError) as e:
                    resolve_image(image, store, str(sessions))
                assert e.value.status_code == 404
        with pytest.raises(RequestError):  # outside a request no file is an upload
            resolve_image(upload, store)
    finally:
        for path in (placed, upload, link):
            if os.path.lexists(path):
                os.remove(path)


# --- the app -------------------------------------------------------------------------------------------
def test_app_infer_wsi_contours_match_the_label_image(tmp_path, monkeypatch):
    """A JPEG pyramidal TIFF in the datastore, a random tiny model with threshold at the median of its map:
    the DSA contours of a 2 x 2 tile region rasterise to the label images of the same tiles."""
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    rng = np.random.default_rng(0)
    level0 = (rng.random((8, 10, 3)) * 255).astype(np.uint8).repeat(32, 0).repeat(32, 1)
    studies = tmp_path / "studies"
    studies.mkdir()
    write_aperio_tiff(studies / "slide.tif", level0)
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    write_model(bundle / "models")
    region_map = PixelCAMPredictor.from_model_dir(bundle / "models", device="cpu").predict(level0[32:160, 64:192])
    write_model(bundle / "models", threshold=float(np.median(region_map["map"])))
    app = PixelCAMApp(str(tmp_path / "app"), str(studies), {"bundle_dir": str(bundle)})
    region = {"location": [64, 32], "size": [128, 128], "tile_size": [64, 64], "level": 0}
    tiles = plan_tiles(region, 320, 256)
    masks = []
    for tile in tiles:
        res = app.infer({"model": "pixelcam", "image": "slide", "device": "cpu", "level": 0, **tile})
        masks.append(np.asarray(Image.open(res["file"])).astype(bool))
        os.remove(res["file"])
    label = np.block([[masks[0], masks[1]], [masks[2], masks[3]]])

    request = {"model": "pixelcam", "image": "slide", "output": "dsa", "min_poly_area": 0, "multi_gpu": True}
    answer = app.infer_wsi({**request, **region})  # multi_gpu: MONAI Label's ZeroDivisionError on CPU
    try:
        dsa = json.loads(Path(answer["file"]).read_text())
    finally:
        os.remove(answer["file"])
    result = answer["params"]
    assert len(result["annotations"]) == 4 and result["polygons"] == len(dsa["elements"]) > 0
    contours = [[p[:2] for p in e["points"]] for e in dsa["elements"]]
    raster = rasterise(contours, label.shape, origin=(64, 32))
    iou = (raster & label).sum() / max((raster | label).sum(), 1)
    assert iou > 0.9, iou
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["class_name"] in result["probabilities"] and result["class_name"] in result["description"]
    with pytest.raises(RequestError) as e:
        app.infer_wsi({**request, "image": str(studies / "slide.tif")})
    assert e.value.status_code == 404
    with pytest.raises(RequestError) as e:
        app.infer_wsi({**request, "location": [0, 0], "size": [320, 256], "tile_size": [4, 4]})
    assert e.value.status_code == 413 and "max_wsi_tiles" in e.value.detail and "5120 tiles" in e.value.detail
