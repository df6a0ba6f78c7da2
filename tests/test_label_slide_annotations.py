"""Slide annotations train the model through a real server (README, "Annotating slides"): ASAP XML written
by MONAI Label's own writer (what QuPath's *Submit Label* sends) and submitted with MONAI Label's own client,
then ``/train/pixelcam``; bad annotations are refused with 422 naming them.

The slide: 8 x 8 blocks of 128 px of synthetic CAMELYON16-like tissue. Annotated: a tumour and a normal
region (rows 0-3), two tumour regions with their metastasis polygons and a normal region (rows 4-5). Held
out: rows 6-7, a checkerboard of tumour and normal blocks nobody annotated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MONAILABEL_MISSING

pytestmark = pytest.mark.server

pytest.importorskip("monailabel", reason=MONAILABEL_MISSING)

import torch  # noqa: E402
from monailabel.client.client import MONAILabelClientException  # noqa: E402
from monailabel.utils.others.pathology import create_asap_annotations_xml  # noqa: E402

from monai_pixelcam.data import load_datalist  # noqa: E402
from monai_pixelcam.data.synthetic.slides import synthetic_slide  # noqa: E402
from monai_pixelcam.inference import PixelCAMPredictor, close_slide, open_slide, read_rgb_region  # noqa: E402
from monai_pixelcam.metrics.localization import PxAPMetric  # noqa: E402
from label_server_process import REPO, running_server  # noqa: E402

SLIDE_ID, BLOCK, ROI = "slide_0001", 128, "metastasis"
CONF = {"classes": "normal,tumor", "negative_classes": "normal", "roi_labels": ROI}
TUMOUR, NORMAL = [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]
GRID = [TUMOUR] * 6 + [[(r + c) % 2 for c in range(8)] for r in (6, 7)]
# (class, rows, columns, with its metastasis polygons)
REGIONS = [
    ("tumor", (0, 4), (0, 4), False), ("normal", (0, 4), (4, 8), False),
    ("tumor", (4, 6), (0, 2), True), ("tumor", (4, 6), (2, 4), True), ("normal", (4, 6), (4, 8), False),
]
TRAIN_PARAMS = {
    "mode": "full", "source_epochs": 30, "pixelcam_epochs": 10, "image_size": BLOCK, "crop_size": BLOCK - 8,
    "batch_size": 8, "num_workers": 0, "val_interval": 1, "valpx_per_class": 3,
    "bundle_overrides": {"cam_methods": ["cam"], "tensorboard_images": 0},
}


def _asap(path: Path, polygons: list[tuple[str, np.ndarray]]) -> Path:
    """ASAP XML of ``(label, ring)`` polygons, written by MONAI Label's own writer, at ``path``."""
    colours = {"tumor": [255, 0, 0], "normal": [0, 0, 255], ROI: [0, 255, 0]}
    results = [{"annotation": {"labels": {label: colours.get(label, [0, 0, 0])},
                               "elements": [{"label": label, "contours": [ring.tolist()]}]}}
               for label, ring in polygons]
    written, _ = create_asap_annotations_xml({"name": "QuPath", "description": "", "model": "", "annotations": results})
    return Path(shutil.move(written, path))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("label_slides")
    studies = root / "studies"
    studies.mkdir()
    slide = synthetic_slide(studies / f"{SLIDE_ID}.svs", GRID, kind="camelyon", block=BLOCK, seed=3)
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    return {"root": root, "studies": studies, "bundle": bundle, "slide": slide}


@pytest.fixture(scope="module")
def server(workspace):
    with running_server(workspace["root"], workspace["studies"], workspace["bundle"], CONF) as running:
        yield running


def _refused(server, path: Path) -> str:
    with pytest.raises(MONAILabelClientException) as err:
        server.client.save_label(SLIDE_ID, str(path), tag="final")
    assert "Status: 422" in err.value.msg, err.value.msg
    return err.value.msg


def test_bad_annotations_get_422_naming_them(server, workspace):
    slide, root = workspace["slide"], workspace["root"]
    region = slide.rectangle((0, 2), (0, 2))
    cases = {
        "unknown class": ([("lymphocytes", region)], "lymphocytes: unknown class 'lymphocytes'"),
        "outside": ([("tumor", region + [8 * BLOCK - 100, 0])], "tumor: reaches outside the slide (1024 x 1024 px)"),
        "self-intersecting": ([("tumor", np.array([[0, 0], [200, 200], [200, 0], [0, 200]], float))],
                              "tumor: the polygon is self-intersecting"),
        "empty": ([("tumor", np.array([[10, 10], [100, 100], [200, 200]], float))], "tumor: the region is empty"),
        "stray region of interest": ([("tumor", region), (ROI, slide.rectangle((6, 7), (6, 7)))],
                                     f"{ROI}: a region of interest must lie inside a class region"),
    }
    for name, (polygons, message) in cases.items():
        text = _refused(server, _asap(root / f"{name}.xml", polygons))
        assert message in text and f"label 'final' of image '{SLIDE_ID}'" in text, (name, text)
        assert str(root) not in text  # the answer names the annotation, never a server path
    datastore = server.client.datastore()
    assert not datastore["objects"][SLIDE_ID]["labels"], datastore["objects"][SLIDE_ID]


@pytest.fixture(scope="module")
def trained(server, workspace) -> dict:
    """The slide's regions and metastasis outlines as QuPath submits them, then a full training."""
    slide = workspace["slide"]
    polygons = []
    for label, rows, cols, with_roi in REGIONS:
        polygons.append((label, slide.rectangle(rows, cols)))
        polygons += [(ROI, ring) for ring in slide.roi_rings(rows, cols)] if with_roi else []
    answer = server.client.save_label(SLIDE_ID, str(_asap(workspace["root"] / "final.xml", polygons)), tag="final")
    assert answer, answer
    server.train(TRAIN_PARAMS)
    stats = server.client.info()["train_stats"]["pixelcam"]
    return {"stats": stats, "datalist": load_datalist(Path(stats["run_dir"]) / "datalist.json")}


def test_the_job_trains_on_the_annotated_tiles(trained):
    stats, datalist = trained["stats"], trained["datalist"]
    print(f"slide tiles per split: {stats['slide_tiles']}; images per split: {stats['images']}")
    assert stats["slide_tiles"] == stats["images"]  # the slide is the whole datastore
    weak = [it for s in ("train", "valcl") for it in datalist[s]]
    masked = [it for s in ("valpx", "test") for it in datalist[s]]
    # 16 + 16 + 8 tiles of the unmasked regions; 4 + 4 of the two regions with metastasis polygons
    assert len(weak) == 40 and not any(it["mask"] for it in weak)
    assert sorted(it["label"] for it in weak) == [0] * 24 + [1] * 16
    assert len(masked) == 8 and all(it["mask"] and it["label"] == 1 for it in masked)
    assert len(datalist["valpx"]) == 3


def test_the_published_model_localizes_on_the_held_out_region(server, workspace, trained):
    """PxAP of the published model's maps on the held-out tumour blocks (rows 6-7), against the constant-map
    floor (the mask fraction there): what a map that knows nothing scores. Measured with seeds 0, 1, 2 of the
    job: 71.4, 90.9 and 62.6 against 33.6; the margin asked, 10, is a third of the smallest."""
    slide = workspace["slide"]
    predictor = PixelCAMPredictor.from_model_dir(workspace["bundle"] / "models", device="cpu")
    assert predictor.image_size == BLOCK and predictor.classes == ["normal", "tumor"]
    reader, wsi = open_slide(slide.path)
    maps, masks = [], []
    try:
        for r in (6, 7):
            for c in range(8):
                if GRID[r][c] != 1:
                    continue
                tile = read_rgb_region(reader, wsi, (r * BLOCK, c * BLOCK), (BLOCK, BLOCK), 0)
                maps.append(torch.as_tensor(predictor.predict(tile)["map"])[None, None])
                masks.append(torch.as_tensor(slide.mask[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK])[None, None])
    finally:
        close_slide(wsi)
    metric = PxAPMetric()
    metric(torch.cat(maps), torch.cat(masks))
    pxap, floor = 100 * metric.aggregate(), 100 * float(torch.cat(masks).float().mean())
    print(f"held-out region: PxAP {pxap:.1f}, constant-map floor {floor:.1f}")
    assert pxap > floor + 10, (pxap, floor)
