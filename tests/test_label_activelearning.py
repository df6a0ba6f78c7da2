"""Active learning strategy ``pixelcam_uncertainty``: the score's formula, and the choice among the datastore's
unlabelled images in the order of that score (no server)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("monailabel") is None:
    pytest.skip("monailabel is not installed (see README, MONAI Label)", allow_module_level=True)

import tifffile  # noqa: E402
from monailabel.datastore.local import LocalDatastore  # noqa: E402
from PIL import Image  # noqa: E402
from scipy.stats import entropy  # noqa: E402

from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from monai_pixelcam.label.activelearning import PixelCAMUncertainty, prediction_uncertainty  # noqa: E402
from monai_pixelcam.label.errors import RequestError  # noqa: E402
from monai_pixelcam.label.infer import PixelCAMInferTask  # noqa: E402
from test_label_app import write_model  # noqa: E402
from test_label_wsi import write_aperio_tiff  # noqa: E402


def test_uncertainty_formula_and_range():
    ones = np.ones((4, 5))
    top = prediction_uncertainty([0.5, 0.5], 0.5 * ones)
    assert top["score"] == pytest.approx(2.0) and top["class_entropy"] == pytest.approx(1.0)
    certain = prediction_uncertainty([1.0, 0.0], np.where(np.eye(4, 5) > 0, 1.0, 0.0))
    assert certain["score"] == pytest.approx(0.0, abs=1e-5)  # 0 log 0 = 0 up to the 1e-7 clipping
    m = np.array([[0.2, 0.8], [0.5, 0.99]])
    got = prediction_uncertainty([0.7, 0.2, 0.1], m)
    # scipy's entropy (base K for classes, base 2 for each pixel's foreground/background pair)
    expected_class = entropy([0.7, 0.2, 0.1], base=3)
    expected_map = np.mean([entropy([v, 1 - v], base=2) for v in m.ravel()])
    assert got["class_entropy"] == pytest.approx(expected_class, abs=1e-9)
    assert got["foreground_entropy"] == pytest.approx(expected_map, abs=1e-9)
    assert got["score"] == pytest.approx(expected_class + expected_map, abs=1e-9)
    assert prediction_uncertainty([1.0], 0.5 * ones)["class_entropy"] == 0.0


@pytest.fixture()
def studies(tmp_path) -> tuple[LocalDatastore, PixelCAMInferTask, Path]:
    """Six random images and a JPEG pyramidal TIFF: two images with a class, one with a final mask, the rest
    unlabelled; a random tiny model."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "studies"
    folder.mkdir()
    for k in range(6):
        # different smoothness -> different map and class confidence of the random model
        small = rng.integers(0, 256, (4 + 4 * k, 4 + 4 * k, 3), dtype=np.uint8)
        Image.fromarray(small).resize((48, 48), Image.NEAREST).save(folder / f"img_{k}.png")
    cells = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    write_aperio_tiff(folder / "slide.tif", cells.repeat(32, 0).repeat(32, 1))
    store = LocalDatastore(str(folder), extensions=["*.png", "*.tif"], auto_reload=False)
    store.update_image_info("img_0", {"label": "benign"})
    store.update_image_info("img_1", {"label": 1})
    mask = folder.parent / "mask.png"
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(mask)
    store.save_label("img_2", str(mask), "final", {})
    return store, PixelCAMInferTask(write_model(tmp_path / "models")), folder


def _expected_scores(store, task) -> dict[str, float]:
    """Scores computed apart from the strategy: whole images, and for the slide the mean over the 4 x 4 grid
    of model-sized tiles centred at ((c + 0.5) W / 4, (r + 0.5) H / 4) of level 0 (decoded by tifffile)."""
    predictor = PixelCAMPredictor.from_model_dir(task.model_dir, device="cpu")
    out = {}
    for image_id in ("img_3", "img_4", "img_5"):
        rgb = np.asarray(Image.open(store.get_image_uri(image_id)).convert("RGB"))
        p = predictor.predict(rgb)
        out[image_id] = prediction_uncertainty(p["probs"], p["map"])["score"]
    level0 = tifffile.imread(store.get_image_uri("slide"), level=0)
    s, (h, w) = predictor.image_size, level0.shape[:2]
    tiles = []
    for r in range(4):
        for c in range(4):
            x = int(min(max((c + 0.5) * w / 4 - s / 2, 0), w - s))
            y = int(min(max((r + 0.5) * h / 4 - s / 2, 0), h - s))
            tiles.append(level0[y : y + s, x : x + s])
    scores = [prediction_uncertainty(p["probs"], p["map"])["score"] for p in predictor.predict(tiles)]
    out["slide"] = float(np.mean(scores))
    return out


def test_strategy_returns_unlabelled_images_in_the_order_of_their_score(studies):
    store, task, _ = studies
    strategy = PixelCAMUncertainty(task)
    assert strategy.unlabelled(store) == ["img_3", "img_4", "img_5", "slide"]
    expected = _expected_scores(store, task)
    ranking = sorted(expected, key=lambda i: -expected[i])
    assert len({round(v, 6) for v in expected.values()}) == 4  # distinct scores: the order is meaningful
    served = []
    while True:
        answer = strategy({"strategy": "pixelcam_uncertainty"}, store)
        if answer is None:
            break
        served.append(answer["id"])
        assert answer["pixelcam_uncertainty"]["score"] == pytest.approx(expected[answer["id"]], abs=1e-5)
        assert 0.0 <= answer["pixelcam_uncertainty"]["score"] <= 2.0
        assert answer["candidates"] == 4 - len(served) + 1
        store.update_image_info(answer["id"], {"label": "malignant"})  # the annotator labels it
    assert served == ranking, (served, expected)
    assert math.isfinite(sum(expected.values()))


def test_strategy_refuses_a_patch_request(studies):
    store, task, _ = studies
    with pytest.raises(RequestError) as e:
        PixelCAMUncertainty(task)({"strategy": "pixelcam_uncertainty", "image": "img_3"}, store)
    assert e.value.status_code == 400 and "Next Patch" in e.value.detail
