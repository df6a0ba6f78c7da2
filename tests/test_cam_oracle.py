"""The "oracle" CAM store: ground-truth masks at feature resolution, through the same store machinery."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from monai_pixelcam.cams import CAMStore, LoadStoredCAMd, MaskOracle, StaleCAMStoreError, store_method_name
from monai_pixelcam.networks import build_classifier
from conftest import build_store

SIZE = 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_classifier(encoder="resnet18", head="cam", num_classes=2, base_width=8).eval()


@pytest.fixture()
def checkpoint(tmp_path, model):
    path = tmp_path / "source.pt"
    torch.save(model.state_dict(), path)
    return path


def make_items(n=4):
    g = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        mask = torch.zeros(1, SIZE, SIZE)
        # a rectangle whose edges fall inside feature cells, so some cells are partly covered
        top, left = 5 + 3 * i, 11 + 2 * i
        mask[:, top : top + 21, left : left + 30] = 1.0
        items.append({"image": torch.rand(3, SIZE, SIZE, generator=g), "mask": mask, "label": i % 2, "id": f"o{i}"})
    return items


def test_oracle_store_holds_masks_at_feature_resolution(tmp_path, model, checkpoint):
    items = make_items()
    root = tmp_path / "store"
    build_store(root, model, items, "Oracle", checkpoint, batch_size=3, dtype="float32")
    manifest = json.loads((root / "manifest.json").read_text())
    with torch.no_grad():
        h, w = model.encoder(items[0]["image"][None]).shape[-2:]
    assert manifest["method"] == "oracle" and manifest["feature_size"] == [h, w]
    store = CAMStore.open(root, checkpoint_path=checkpoint, method="oracle")
    for it in items:
        expected = F.adaptive_avg_pool2d(it["mask"][None], (h, w))[0]
        loaded = store.load(it["id"])
        torch.testing.assert_close(loaded, expected)
        # partly covered cells carry their covered fraction, not a hard 0/1
        assert ((loaded > 0) & (loaded < 1)).any()
    with pytest.raises(StaleCAMStoreError, match="'oracle' maps, not the expected 'cam'"):
        CAMStore.open(root, checkpoint_path=checkpoint, method="cam")
    # the training transform reads the oracle store like any other
    out = LoadStoredCAMd("cam", store=root, checkpoint_path=checkpoint, method="oracle")(dict(items[1]))
    assert out["cam"].shape == (1, SIZE, SIZE)


def test_oracle_needs_masks(tmp_path, model, checkpoint):
    items = [{k: v for k, v in it.items() if k != "mask"} for it in make_items(2)]
    with pytest.raises(KeyError, match="no 'mask' key"):
        build_store(tmp_path / "store", model, items, "oracle", checkpoint)
    assert not (tmp_path / "store" / "manifest.json").exists()
    oracle = MaskOracle(model)
    with pytest.raises(ValueError, match="masks must be B x 1 x H x W"):
        oracle(torch.rand(2, 3, SIZE, SIZE), torch.ones(2, 1, SIZE // 2, SIZE // 2))


def test_store_method_names():
    assert store_method_name("ORACLE") == "oracle" and store_method_name("LayerCAM") == "layercam"
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        store_method_name("scorecam")
