"""One input definition from training to every consumer, checked on the maps themselves: a bundle trained with
non-default input settings (``image_size``, ``crop_size``, Macenko ``stain_normalize``) gives one image the same
map through its evaluation, folder inference, slide inference and MONAI Label's ``/infer``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from conftest import CONFIGS, MONAILABEL_MISSING, TINY_BUNDLE
from monai.bundle import ConfigWorkflow
from PIL import Image

from monai_pixelcam.data import load_datalist
from monai_pixelcam.inference import PixelCAMPredictor, localize_folder
from monai_pixelcam.networks.pixelcam import foreground_map
from monai_pixelcam.networks.weights import load_checkpoint

#: Non-default input settings: none equals the bundle's default (160, 128, false).
SETTINGS = {**TINY_BUNDLE, "image_size": 56, "crop_size": 40, "stain_normalize": True}
#: float32 noise of two forward passes of the same input through different batch sizes and code paths
ATOL = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_glas):
    """A bundle root trained end to end with :data:`SETTINGS` (configs copied in, so MONAI Label can serve it)."""
    root = tmp_path_factory.mktemp("round_trip")
    shutil.copytree(CONFIGS, root / "configs")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type="train", logging_file=False, bundle_root=str(root),
        datalist=str(tiny_glas), **SETTINGS,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return root, workflow.parser


@pytest.fixture(scope="module")
def reference(trained, tiny_glas, tmp_path_factory):
    """A test image already at the model's input size, and what the bundle's evaluation makes of it: the network
    input from ``validate#preprocessing`` (the chain ``evaluate`` runs on test), the pixel-head logits of the
    checkpoint evaluation loads (``pixelcam_bloc.pt``) and the map of ``validate#inferer``."""
    root, parser = trained
    size = SETTINGS["image_size"]
    item = load_datalist(tiny_glas)["test"][0]
    folder = tmp_path_factory.mktemp("image")
    path = folder / "tile.png"
    Image.open(item["image"]).convert("RGB").resize((size, size), Image.BICUBIC).save(path)
    network = parser.get_parsed_content("network_def")
    load_checkpoint(network, root / "models" / "pixelcam_bloc.pt")
    network.eval()
    x = parser.get_parsed_content("validate#preprocessing")({"image": str(path), "mask": None, "label": 0})["image"]
    with torch.inference_mode():
        out = network(torch.as_tensor(x)[None].float())
        evaluated = parser.get_parsed_content("validate#inferer")(torch.as_tensor(x)[None].float(), network)["map"]
    return path, out["pix"], torch.softmax(out["cls"], dim=1)[0].double().numpy(), evaluated[0, 0].numpy()


def _map_at(pix: torch.Tensor, size: int) -> np.ndarray:
    return foreground_map(pix, [size, size])[0, 0].numpy()


def _assert_same_mask(mask: np.ndarray, score: np.ndarray, threshold: float, where: str) -> None:
    """``mask`` is ``score >= threshold`` except where the score lies within float noise of the threshold."""
    decided = np.abs(score - threshold) > ATOL
    assert mask.shape == score.shape, where
    np.testing.assert_array_equal(mask.astype(bool)[decided], (score >= threshold)[decided], err_msg=where)


def test_the_model_folder_carries_the_input_definition(trained, tiny_glas):
    root, _ = trained
    meta = json.loads((root / "models" / "model_meta.json").read_text())
    assert (meta["image_size"], meta["stain_normalize"]) == (SETTINGS["image_size"], True)
    # the model's scale is the training resize's: the 64 px tiles' mpp times 64 / image_size
    tiles = json.loads(Path(tiny_glas).read_text())
    assert meta["mpp"] == pytest.approx(tiles["mpp"] * 64 / SETTINGS["image_size"])


def test_one_image_one_map_through_evaluate_folder_and_slide(trained, reference, tmp_path):
    root, _ = trained
    path, pix, _, evaluated = reference
    size = SETTINGS["image_size"]
    predictor = PixelCAMPredictor.from_model_dir(root / "models", device="cpu")
    assert predictor.image_size == size and predictor.stain_normalize
    # evaluate: validate#inferer's map is the pixel head's map at the input size
    np.testing.assert_allclose(evaluated, _map_at(pix, size), atol=ATOL, rtol=0)

    # folder inference (a tile) and slide inference (the same pixels as a tiled TIFF at the model's mpp), one call
    rgb = np.asarray(Image.open(path).convert("RGB"))
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(path, src / "tile.png")
    resolution = 1e4 / predictor.mpp  # pixels per centimetre
    tifffile.imwrite(
        src / "slide.tif", rgb, photometric="rgb", tile=(64, 64), resolution=(resolution, resolution),
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    out = tmp_path / "out"
    report = localize_folder(
        src, out, predictor, save_nifti=True, max_tile_pixels=size * size - 1,
        slide={"overlap": 0, "num_workers": 0, "max_heatmap_pixels": 10**6}, progress=False,
    )  # fmt: skip
    assert sorted(report["processed"]) == ["slide.tif", "tile.png"] and not report["failed"], report
    folder_map = nib.load(out / "tile_map.nii.gz").get_fdata().T  # stored W x H
    np.testing.assert_allclose(folder_map, evaluated, atol=ATOL, rtol=0)

    slide_map = nib.load(out / "slide_map.nii.gz").get_fdata().T
    side = slide_map.shape[0]  # one window over the whole slide: its map at the heat map's grid
    expected = F.interpolate(foreground_map(pix), size=(side, side), mode="bilinear", antialias=side < pix.shape[-1])
    np.testing.assert_allclose(slide_map, expected[0, 0].numpy(), atol=ATOL, rtol=0)


def test_one_image_one_map_through_monai_label_infer(trained, reference, tmp_path):
    """MONAI Label's ``/infer``: the app over a datastore holding the image, served from the trained bundle
    folder, answers the evaluation's mask and probabilities."""
    label = pytest.importorskip("monai_pixelcam.label.app", reason=MONAILABEL_MISSING)
    root, _ = trained
    path, _, probs, evaluated = reference
    predictor = PixelCAMPredictor.from_model_dir(root / "models", device="cpu")
    threshold = predictor.threshold
    studies = tmp_path / "studies"
    studies.mkdir()
    shutil.copy(path, studies / "tile.png")
    app = label.PixelCAMApp(str(tmp_path / "app"), str(studies), {"bundle_dir": str(root)})
    result = app.infer({"model": "pixelcam", "image": "tile", "device": "cpu"})
    _assert_same_mask(np.asarray(Image.open(result["file"])), evaluated, threshold, "/infer of the tile")
    answered = [result["params"]["probabilities"][c] for c in predictor.classes]
    np.testing.assert_allclose(answered, probs, atol=ATOL, rtol=0)
