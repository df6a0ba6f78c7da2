"""The MONAI Label app behind a real server: ``monailabel start_server`` on 127.0.0.1, driven over HTTP and
with MONAI Label's own Python client (``monailabel.client.MONAILabelClient``).

One server per module (a port the system picks, a synthetic CAMELYON16-like datastore, a bundle folder of its own). The
flow (the server behind the app's guard, :mod:`tests.label_server_process`): no model yet (503); image ids that are not datastore ids (paths, ``..``, URL-encoded) get one and the
same 404 on ``/infer``, ``/infer/wsi`` and ``/infer/wsi_v2``; annotate image-level labels and train a
localizing model through ``/train/pixelcam``; infer held-out uploads and compare the masks with the true
ones; annotate a region of a JPEG-compressed pyramidal TIFF (DSA JSON, ASAP XML, JSON) and compare the
polygons with the true mask; retrain briefly (fine-tune) and see the new model used; bad inputs get 4xx
answers; the active learning strategy serves the unlabelled images in the order of their uncertainty.
"""

from __future__ import annotations

import io
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import MONAILABEL_MISSING

pytestmark = pytest.mark.server

pytest.importorskip("monailabel", reason=MONAILABEL_MISSING)

import requests  # noqa: E402
from PIL import Image  # noqa: E402
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

from monai_pixelcam.data import load_datalist  # noqa: E402
from monai_pixelcam.data.io import read_mask  # noqa: E402
from monai_pixelcam.data.synthetic import render_tile, synthesize  # noqa: E402
from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from monai_pixelcam.label.activelearning import PixelCAMUncertainty  # noqa: E402
from monai_pixelcam.label.import_labels import import_datalist  # noqa: E402
from monai_pixelcam.label.infer import PixelCAMInferTask  # noqa: E402
from label_server_process import REPO, Server, running_server  # noqa: E402
from test_label_wsi import rasterise, write_aperio_tiff  # noqa: E402

NEGATIVE = {"negative_classes": "normal"}
SPLITS = ("train", "valcl", "valpx", "test")
KIND, CLASSES = "camelyon", ["normal", "tumor"]
# 128 px: at 64 px a lymph-node cell is ~2 px and short runs localize by chance
IMAGE_SIZE = 128
N_IMAGES = 64
MASK_EVERY = 4  # every 4th datastore image gets its full mask as a "final" label (valpx / test)
N_EXTRA = 3  # unlabelled held-out images in the datastore, beside the slide
SLIDE_ID, SLIDE_GRID = "wsi_0000", (4, 5)  # 4 x 5 cells of 128 px: 640 x 512 at level 0
REGION = {"location": [128, 128], "size": [384, 256]}  # 3 x 2 cells, away from the slide's left and top edges
# small, single-threaded runs: on two shared cores, two torch threads per process mostly wait for each other
TRAIN_PARAMS = {
    "image_size": IMAGE_SIZE,
    "crop_size": IMAGE_SIZE - 8,
    "batch_size": 8,
    "num_workers": 0,
    "val_interval": 1,
    "valpx_per_class": 3,
    "bundle_overrides": {"cam_methods": ["cam"], "tensorboard_images": 0},
}


def _items(datalist_path: Path) -> list[dict]:
    data = load_datalist(datalist_path)
    return sorted(
        ({**it, "class_name": data["classes"][it["label"]]} for s in SPLITS for it in data[s]), key=lambda d: d["id"]
    )


def _slide(path: Path) -> np.ndarray:
    """A JPEG pyramidal TIFF (Aperio layout, MPP 0.5) of synthetic lymph-node cells, tumour and normal in a
    checkerboard; returns its true level-0 mask."""
    rows, cols = SLIDE_GRID
    rgb = np.zeros((rows * IMAGE_SIZE, cols * IMAGE_SIZE, 3), np.uint8)
    mask = np.zeros(rgb.shape[:2], np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile, truth = render_tile(KIND, (r + c) % 2, IMAGE_SIZE, seed=7, index=r * cols + c)
            cell = np.s_[r * IMAGE_SIZE : (r + 1) * IMAGE_SIZE, c * IMAGE_SIZE : (c + 1) * IMAGE_SIZE]
            rgb[cell], mask[cell] = tile, truth
    write_aperio_tiff(path, rgb, mpp=0.5, tile=IMAGE_SIZE)
    return mask.astype(bool)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """Synthetic CAMELYON16-like datastore (64 images of 128 x 128, no image labels yet, masks of every 4th
    image as final labels, plus 3 unlabelled held-out images and a slide), a bundle folder with the
    repository's configs, and held-out images with their masks."""
    root = tmp_path_factory.mktemp("label_server")
    datalist = synthesize(KIND, root / "data", n_images=N_IMAGES, image_size=IMAGE_SIZE, seed=0, progress=False)
    items = _items(datalist)
    studies = root / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for k, it in enumerate(items):
        shutil.copy(it["image"], studies / f"{it['id']}.png")
        if k % MASK_EVERY == 0:
            shutil.copy(it["mask"], studies / "labels" / "final" / f"{it['id']}.png")
    held_out = [
        it
        for seed in (1, 2)
        for it in _items(
            synthesize(KIND, root / f"held_out_{seed}", n_images=16, image_size=IMAGE_SIZE, seed=seed, progress=False)
        )
    ]
    extras = [f"extra_{k}" for k in range(N_EXTRA)]
    for name, it in zip(extras, held_out[::5]):
        shutil.copy(it["image"], studies / f"{name}.png")
    slide_mask = _slide(studies / f"{SLIDE_ID}.tif")
    bundle = root / "bundle"
    shutil.copytree(REPO / "bundles" / "pixelcam" / "configs", bundle / "configs")
    masked = {it["id"] for k, it in enumerate(items) if k % MASK_EVERY == 0}
    return {
        "root": root,
        "studies": studies,
        "bundle": bundle,
        "datalist": datalist,
        "items": items,
        "masked": masked,
        "held_out": held_out,
        "unlabelled": [*extras, SLIDE_ID],
        "slide_mask": slide_mask,
    }


def _multipart(response: requests.Response) -> tuple[dict, np.ndarray]:
    """MONAI Label's default infer answer: multipart with ``params`` (JSON) and ``image`` (the label PNG)."""
    assert response.status_code == 200, response.text
    parts = MultipartDecoder(response.content, response.headers["Content-Type"]).parts
    by_name = {}
    for part in parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        name = disposition.split('name="')[1].split('"')[0]
        by_name[name] = part.content
    return json.loads(by_name["params"]), np.asarray(Image.open(io.BytesIO(by_name["image"])))


@pytest.fixture(scope="module")
def server(workspace) -> Server:
    with running_server(workspace["root"], workspace["studies"], workspace["bundle"], NEGATIVE) as running:
        yield running


def test_untrained_server_answers_with_reasons(server, workspace):
    info = server.client.info()
    assert info["name"] == "PixelCAM" and info["labels"] == {"roi": 1} and not info["trained"]
    assert "pixelcam" in info["models"] and "pixelcam" in info["trainers"]
    assert list(info["strategies"]) == ["pixelcam_uncertainty"]
    assert info["datastore"]["total"] == N_IMAGES + N_EXTRA + 1
    assert info["datastore"]["completed"] == N_IMAGES // MASK_EVERY
    r = server.infer(workspace["items"][1]["id"])
    assert r.status_code == 503 and "POST /train/pixelcam" in r.json()["detail"], r.text
    assert server.get("/info/").status_code == 200


def test_image_ids_resolve_through_the_datastore_only(server, workspace):
    """Paths (outside the datastore or of its own files), ``..`` and URL-encoded ids all get the same 404 on
    the three infer endpoints, whether or not the file exists; a datastore id gets past (503: no model)."""
    studies, outside = workspace["studies"], Path(workspace["held_out"][0]["image"])
    ids = [
        str(outside),  # a readable image outside the datastore
        str(studies / f"{workspace['items'][1]['id']}.png"),  # a datastore image by its path, not its id
        f"../{outside.parent.parent.name}/images/{outside.stem}",
        "../../../../etc/passwd",
        "/etc/passwd",
        "..%2F..%2F..%2F..%2Fetc%2Fpasswd",  # arrives encoded: MONAI Label decodes the query once
        "no_such_image",
    ]
    wsi = {"location": [0, 0], "size": [64, 64], "tile_size": [64, 64]}

    def calls(image_id: str, params: dict | None = None) -> list[requests.Response]:
        params = params or {}
        query, body = {"image": image_id}, {**wsi, "params": params}
        return [
            server.post("/infer/pixelcam", params={**query, "output": "json"}, data={"params": json.dumps(params)}),
            server.post("/infer/wsi/pixelcam", params={**query, "output": "dsa"}, json=body),
            server.post("/infer/wsi_v2/pixelcam", params={**query, "output": "asap"}, data={"wsi": json.dumps(body)}),
        ]

    details = set()
    for image_id in ids:
        for r in calls(image_id):
            assert r.status_code == 404, (image_id, r.request.url, r.text)
            details.add(r.json()["detail"].replace(repr(image_id), "ID"))
    # the id percent-encoded on the wire (%2e%2e%2f = "../"), and a path smuggled in through the params
    raw = server.post("/infer/pixelcam?image=%2e%2e%2f%2e%2e%2fetc%2fpasswd&output=json")
    assert raw.status_code == 404 and "'../../etc/passwd'" in raw.json()["detail"], raw.text
    for r in calls(workspace["items"][1]["id"], params={"image": "/etc/passwd"}):
        assert r.status_code == 404 and "'/etc/passwd'" in r.json()["detail"], r.text
    assert len(details) == 1, details  # one answer: it tells nothing about the server's files
    for r in calls(workspace["items"][1]["id"]):
        assert r.status_code == 503, r.text  # a datastore id is served (once a model exists)


@pytest.fixture(scope="module")
def trained(server, workspace) -> dict:
    """The annotator's image-level labels (the masks are already final labels), then a full training."""
    counts = import_datalist(server.url, workspace["datalist"], mask_splits=())
    assert counts == {"labelled": N_IMAGES, "masks": 0, "missing": []}
    server.train({"mode": "full", "source_epochs": 16, "pixelcam_epochs": 4, **TRAIN_PARAMS})
    return server.client.info()


def test_trained_model_localizes_held_out_uploads(server, workspace, trained):
    image_id = workspace["items"][1]["id"]
    info = server.get("/datastore/image/info", params={"image": image_id}).json()
    assert info["label"] == workspace["items"][1]["class_name"]
    assert trained["trained"] and trained["classes"] == CLASSES and 0.0 <= trained["threshold"] <= 1.0
    assert trained["negative_classes"] == [0]
    stats = trained["train_stats"]["pixelcam"]
    assert stats["mode"] == "full" and stats["images"]["valpx"] == 6
    assert stats["images"]["valpx"] + stats["images"]["test"] == len(workspace["masked"])

    # held-out images (other seeds), uploaded: the mask has the image's size and overlaps the true mask
    # more than a mask of the same area placed independently of it would (expected overlap |P| |T| / N)
    observed = expected = 0.0
    for it in workspace["held_out"]:
        result, label = _multipart(server.infer(file=Path(it["image"])))
        truth = read_mask(it["mask"]).astype(bool)
        assert label.shape == truth.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(label)) <= {0, 1}
        assert result["class_name"] in CLASSES and list(result["probabilities"]) == CLASSES
        assert result["threshold"] == trained["threshold"]
        predicted = label.astype(bool)
        observed += float((predicted & truth).sum())
        expected += float(predicted.sum()) * float(truth.sum()) / truth.size
    print(f"held-out overlap: {observed:.0f} px, chance {expected:.0f} px, ratio {observed / max(expected, 1e-9):.2f}")
    assert expected > 0, "the model predicts no foreground on any held-out image"
    assert observed / expected > 1.2, f"overlap {observed:.0f} px is not clearly above chance ({expected:.0f} px)"


def _dsa_contours(payload: bytes) -> tuple[list[list[list[float]]], dict]:
    dsa = json.loads(payload)
    for e in dsa["elements"]:
        assert e["type"] == "polyline" and e["closed"] and e["label"] == {"value": "roi"}, e
        assert e["lineColor"] == "rgb(0,255,0)" and e["group"] == "roi"
    return [[p[:2] for p in e["points"]] for e in dsa["elements"]], json.loads(dsa["description"])


def _asap_contours(payload: bytes) -> tuple[list[list[list[float]]], dict]:
    root = ET.fromstring(payload)
    contours = []
    for a in root.iter("Annotation"):
        assert (a.get("Name"), a.get("PartOfGroup"), a.get("Color")) == ("roi", "roi", "#00ff00")
        contours.append([[float(c.get("X")), float(c.get("Y"))] for c in a.iter("Coordinate")])
    return contours, dict(root.find("Annotations").attrib)


def test_wsi_infer_dsa_asap_and_json_on_a_jpeg_pyramidal_tiff(server, workspace, trained):
    """MONAILabelClient.wsi_infer on a region of a JPEG-compressed pyramidal TIFF: DSA JSON and ASAP XML hold
    the same polygons, inside the region, and their union overlaps the true mask well above chance."""
    body = {"level": 0, **REGION, "tile_size": [IMAGE_SIZE, IMAGE_SIZE], "min_poly_area": 16}
    _, dsa = server.client.wsi_infer("pixelcam", SLIDE_ID, body, output="dsa")
    _, asap = server.client.wsi_infer("pixelcam", SLIDE_ID, body, output="asap")
    _, result = server.client.wsi_infer("pixelcam", SLIDE_ID, body, output="json")
    result = json.loads(result)
    contours, description = _dsa_contours(dsa)
    asap_contours, asap_header = _asap_contours(asap)
    assert contours == asap_contours and len(contours) == result["polygons"] > 0
    assert len(result["annotations"]) == 6 and result["location"] == REGION["location"]
    assert result["size"] == REGION["size"] and list(result["probabilities"]) == CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    # the class probabilities reach the viewers in the description (DSA: "desc"; ASAP: Description)
    for text in (description["desc"], asap_header["Description"]):
        assert f"class {result['class_name']}" in text and all(c in text for c in CLASSES), text
    assert description["count"] == len(contours) and description["location"] == REGION["location"]

    (x0, y0), (w, h) = REGION["location"], REGION["size"]
    points = np.concatenate([np.asarray(c) for c in contours])
    assert points[:, 0].min() >= x0 and points[:, 0].max() <= x0 + w, "a polygon leaves the requested region"
    assert points[:, 1].min() >= y0 and points[:, 1].max() <= y0 + h, "a polygon leaves the requested region"
    predicted = rasterise(contours, (h, w), origin=(x0, y0))
    truth = workspace["slide_mask"][y0 : y0 + h, x0 : x0 + w]
    inter, p, t, n = float((predicted & truth).sum()), float(predicted.sum()), float(truth.sum()), truth.size
    dice, iou = 2 * inter / (p + t), inter / (p + t - inter)
    # a random mask of the same area overlaps the truth by |P| |T| / N pixels in expectation
    chance_inter = p * t / n
    chance_dice, chance_iou = 2 * chance_inter / (p + t), chance_inter / (p + t - chance_inter)
    print(
        f"slide region {w} x {h}: {len(contours)} polygons, foreground {p / n:.3f} (true {t / n:.3f}); "
        f"Dice {dice:.3f} vs chance {chance_dice:.3f}, IoU {iou:.3f} vs chance {chance_iou:.3f}"
    )
    assert dice > 1.5 * chance_dice, f"Dice {dice:.3f} is not clearly above chance ({chance_dice:.3f})"

    # QuPath's request for an image the server does not hold: the region uploaded to /infer/wsi_v2
    image = Path(workspace["held_out"][1]["image"])
    wsi = {"location": [0, 0], "size": [0, 0], "tile_size": [1024, 1024], "min_poly_area": 4}
    r = server.post(
        "/infer/wsi_v2/pixelcam", params={"output": "asap"}, files={"file": (image.name, image.read_bytes())},
        data={"wsi": json.dumps(wsi)},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    uploaded, header = _asap_contours(r.content)
    assert [header[k] for k in ("X", "Y", "W", "H")] == ["0", "0", str(IMAGE_SIZE), str(IMAGE_SIZE)]
    assert all(c in header["Description"] for c in CLASSES), header
    for contour in uploaded:
        assert 0 <= np.min(contour) and np.max(contour) <= IMAGE_SIZE


def test_retrain_and_bad_inputs(server, workspace, trained):
    image_id = workspace["items"][1]["id"]
    r = server.post("/infer/pixelcam", params={"image": image_id, "output": "json"})
    assert r.status_code == 200 and r.json()["shape"] == [IMAGE_SIZE, IMAGE_SIZE], r.text
    first_model = r.json()["model"]["modified"]

    server.train({"mode": "finetune", "source_epochs": 1, "pixelcam_epochs": 1, **TRAIN_PARAMS})
    assert server.client.info()["train_stats"]["pixelcam"]["mode"] == "finetune"
    r = server.post("/infer/pixelcam", params={"image": image_id, "output": "json"})
    assert r.status_code == 200 and r.json()["model"]["modified"] != first_model, r.text

    corrupt = workspace["root"] / "corrupt.png"
    corrupt.write_bytes(Path(workspace["held_out"][0]["image"]).read_bytes()[:300])
    r = server.infer(file=corrupt)
    assert r.status_code == 422 and "cannot read image" in r.json()["detail"], r.text
    r = server.infer("no_such_image")
    assert r.status_code == 404 and "no_such_image" in r.json()["detail"], r.text
    r = server.infer(image_id, params={"location": [0, 0], "size": [8, 8], "level": 2})
    assert r.status_code == 400 and "level" in r.json()["detail"], r.text
    r = server.post("/infer/wsi/pixelcam", params={"image": SLIDE_ID}, json={"params": {"threshold": 0.0}})
    assert r.status_code == 400 and "threshold" in r.json()["detail"], r.text
    assert server.client.info()["trained"]

    # masks through the API too: the valpx masks of the datalist become final labels
    counts = import_datalist(server.url, workspace["datalist"], mask_splits=("valpx",))
    valpx = {Path(it["image"]).stem for it in load_datalist(workspace["datalist"])["valpx"]}
    assert counts["masks"] == len(valpx) > 0
    assert server.client.info()["datastore"]["completed"] == len(workspace["masked"] | valpx)


def test_next_sample_serves_unlabelled_images_by_uncertainty(server, workspace, trained):
    """next_sample("pixelcam_uncertainty") through MONAILabelClient: only unlabelled images, highest score
    first (scores recomputed here with the published model); a served image labelled by the annotator
    (a final label through the client) is not served again."""
    studies = workspace["studies"]
    strategy = PixelCAMUncertainty(PixelCAMInferTask(server.bundle / "models"))
    predictor = PixelCAMPredictor.from_model_dir(server.bundle / "models", device="cpu")
    paths = {i: next(studies.glob(f"{i}.*")) for i in workspace["unlabelled"]}
    expected = {i: strategy.score(str(p), predictor)["score"] for i, p in paths.items()}
    ranking = sorted(expected, key=lambda i: -expected[i])
    served = []
    for _ in ranking:
        sample = server.client.next_sample("pixelcam_uncertainty", {})
        assert sample["id"] in workspace["unlabelled"] and sample["id"] not in served, sample
        assert sample["pixelcam_uncertainty"]["score"] == pytest.approx(expected[sample["id"]], abs=1e-4)
        served.append(sample["id"])
        # an empty mask of the image's (level-0) size: the datastore refuses a label of another size
        shape = workspace["slide_mask"].shape if sample["id"] == SLIDE_ID else (IMAGE_SIZE, IMAGE_SIZE)
        empty = workspace["root"] / f"empty_{sample['id']}.png"
        Image.fromarray(np.zeros(shape, np.uint8)).save(empty)
        server.client.save_label(sample["id"], str(empty), tag="final")
    print(f"next_sample order {served}, scores {[round(expected[i], 4) for i in served]}")
    assert served == ranking
    assert server.client.next_sample("pixelcam_uncertainty", {}) == {}
