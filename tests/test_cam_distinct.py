"""Cross-class distinctiveness maps (``seed_maps: distinct`` / ``<cam>+distinct``): the cells a class does not
share with the other classes light up, tissue every class shows does not. And ``seed_maps: auto``: per class,
the method whose maps localize best on valpx."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from monai.bundle import ConfigWorkflow

from monai_pixelcam.cams import CAMStore, normalize_maps, store_method_name
from monai_pixelcam.cams.auto import ValpxSelectedMaps
from monai_pixelcam.cams.distinct import CrossClassDistinctiveness, DistinctCAM
from monai_pixelcam.cams.seed_maps import prepare_seed_maps
from monai_pixelcam.networks.heads import CAMHead

from conftest import CONFIGS, TINY_BUNDLE, build_store

SIZE, CELL = 32, 4  # 8 x 8 feature cells of 4 x 4 pixels
#: background tissue shown by both classes, and each class's own region of interest (RGB = the features)
SHARED, ROI = (0.9, 0.5, 0.1), {0: (0.1, 0.9, 0.2), 1: (0.2, 0.1, 0.9)}


class ColourNet(nn.Module):
    """Features = each 4 x 4 cell's mean colour (``encoder.layer2``), unchanged at the encoder output; a CAM
    head on top. Distances between cells are then distances between colours, known in advance."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict(layer2=nn.AvgPool2d(CELL), layer4=nn.Identity()))
        self.image_head = CAMHead(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_head(self.encoder(x))


def make_image(label: int, index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``3 x SIZE x SIZE`` image (shared tissue with a 3-cell-square ROI at a place set by ``index``, colour
    noise 0.02) and its ``8 x 8`` cell mask."""
    image = torch.tensor(SHARED).view(3, 1, 1).repeat(1, SIZE, SIZE)
    mask = torch.zeros(SIZE // CELL, SIZE // CELL, dtype=torch.bool)
    r, c = index % 5, (2 * index) % 5
    image[:, r * CELL:(r + 3) * CELL, c * CELL:(c + 3) * CELL] = torch.tensor(ROI[label]).view(3, 1, 1)
    mask[r:r + 3, c:c + 3] = True
    return (image + 0.02 * torch.randn(image.shape, generator=generator)).clamp(0, 1), mask


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(8):
        image, mask = make_image(i % 2, i, g)
        items.append({"image": image, "cell_mask": mask, "label": i % 2, "id": f"d{i}"})
    return items


def batches(items, size=3):
    for start in range(0, len(items), size):
        part = items[start:start + size]
        yield torch.stack([it["image"] for it in part]), torch.tensor([it["label"] for it in part])


def test_distinct_lights_class_specific_cells_not_shared_tissue(data):
    model = ColourNet().eval()
    maps = CrossClassDistinctiveness(model, "encoder.layer2", k=5).fit(batches(data))
    for it in data:
        out = maps(it["image"][None], [it["label"]])
        assert out.shape == (1, 1, SIZE // CELL, SIZE // CELL) and out.min() >= 0 and out.max() <= 1
        roi, shared = out[0, 0][it["cell_mask"]], out[0, 0][~it["cell_mask"]]
        # the ROI colour has no match in the other class (cosine distance ~0.6+), shared tissue matches (~0)
        assert roi.min() > 0.9 and shared.max() < 0.1, it["id"]


def test_distinct_cam_is_the_geometric_mean_and_keeps_a_good_cam(data):
    model = ColourNet().eval()
    with torch.no_grad():
        # each class's CAM lights its own ROI colour (green for class 0, blue for class 1)
        model.image_head.fc.weight.copy_(torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    combined = DistinctCAM("cam", model, k=5).fit(batches(data))
    assert combined.name == "cam+distinct"
    for it in data:
        x, roi = it["image"][None], it["cell_mask"]
        cam, distinct = combined.cam(x, class_idx=[it["label"]]), combined.distinct(x, [it["label"]])
        out = combined(x, [it["label"]])
        torch.testing.assert_close(out, normalize_maps((cam * distinct).sqrt()))
        assert out[0, 0][roi].min() > 0.8 and out[0, 0][~roi].max() < 0.5, it["id"]
    with torch.no_grad():
        model.image_head.fc.weight[0] = -1.0  # class 0's CAM is zero everywhere after ReLU: no evidence
    for it in data[::2]:
        x = it["image"][None]
        assert combined.cam(x, class_idx=[0]).eq(0).all()
        torch.testing.assert_close(combined(x, [0]), combined.distinct(x, [0]))


def test_bank_is_a_bounded_seeded_sample(data):
    model = ColourNet().eval()
    first = CrossClassDistinctiveness(model, "encoder.layer2", bank_size=10, seed=3).fit(batches(data))
    again = CrossClassDistinctiveness(model, "encoder.layer2", bank_size=10, seed=3).fit(batches(data, size=5))
    other = CrossClassDistinctiveness(model, "encoder.layer2", bank_size=10, seed=4).fit(batches(data))
    assert sorted(first.banks) == [0, 1] and all(b.shape == (10, 3) for b in first.banks.values())
    for label in (0, 1):
        torch.testing.assert_close(first.banks[label], again.banks[label])
    assert not torch.equal(first.banks[0], other.banks[0])


def test_errors_name_what_is_wrong(data):
    model = ColourNet().eval()
    maps = CrossClassDistinctiveness(model, "encoder.layer2")
    with pytest.raises(RuntimeError, match="call fit"):
        maps(data[0]["image"][None], [0])
    with pytest.raises(ValueError, match=r"holds classes \[0\]; distinctiveness needs images of at least two"):
        maps.fit(batches([it for it in data if it["label"] == 0]))
    with pytest.raises(ValueError, match="'encoder.layer9' is not a submodule"):
        CrossClassDistinctiveness(model, "encoder.layer9")
    with pytest.raises(ValueError, match="k, bank_size and chunk must be >= 1"):
        CrossClassDistinctiveness(model, k=0)
    assert store_method_name("GradCAMpp+Distinct") == "gradcampp+distinct" and store_method_name("DISTINCT") == "distinct"
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        store_method_name("scorecam+distinct")


def test_store_holds_distinct_maps(tmp_path, data):
    model = ColourNet().eval()
    checkpoint = tmp_path / "source.pt"
    torch.save(model.state_dict(), checkpoint)
    items = [{k: v for k, v in it.items() if k != "cell_mask"} for it in data]
    store = build_store(
        tmp_path / "store", model, items, "Distinct", checkpoint, batch_size=3, dtype="float32",
        distinct_kwargs={"distinct_layer": "encoder.layer2", "k": 5},
    )
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["method"] == "distinct" and manifest["feature_size"] == [SIZE // CELL] * 2
    assert manifest["target_layer"] == "encoder.layer2"
    direct = CrossClassDistinctiveness(model, "encoder.layer2", k=5).fit(batches(data))
    for it in data:
        # same features and bank, other batching: float32 matmul rounding only
        torch.testing.assert_close(store.load(it["id"]), direct(it["image"][None], [it["label"]])[0], atol=1e-5, rtol=0)


def pixel_mask(cell_mask: torch.Tensor) -> torch.Tensor:
    return cell_mask.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)[None].float()


def valpx_batches(items):
    yield (torch.stack([it["image"] for it in items]), torch.stack([pixel_mask(it["cell_mask"]) for it in items]),
           torch.tensor([it["label"] for it in items]))


def diffuse_class0_cam_model() -> ColourNet:
    model = ColourNet().eval()
    with torch.no_grad():
        # class 0's CAM lights the shared tissue, class 1's its own ROI
        model.image_head.fc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    return model


def test_auto_chooses_per_class_on_valpx(data):
    auto = ValpxSelectedMaps(diffuse_class0_cam_model(), candidates=("cam", "distinct"), k=5).fit(batches(data))
    with pytest.raises(RuntimeError, match="call select"):
        auto(data[0]["image"][None], [0])
    choice = auto.select(valpx_batches(data[:4]))
    scores = auto.report["valpx_pxap"]
    # class 0: the CAM misses its ROI, distinctiveness finds it; class 1: both find it, the first candidate wins
    assert choice == {0: "distinct", 1: "cam"}, scores
    assert scores["0"]["distinct"] > 95 > 60 > scores["0"]["cam"] and scores["1"]["cam"] > 95
    x = torch.stack([data[4]["image"], data[5]["image"]])
    out = auto(x, [0, 1])
    torch.testing.assert_close(out[:1], auto.extractors["distinct"](x[:1], [0]))
    torch.testing.assert_close(out[1:], auto.extractors["cam"](x[1:], class_idx=[1]))
    # a class valpx cannot judge (no image of it there) gets the first candidate
    assert auto.select(valpx_batches(data[:4:2])) == {0: "distinct"}
    torch.testing.assert_close(auto(x[1:], [1]), auto.extractors["cam"](x[1:], class_idx=[1]))
    with pytest.raises(ValueError, match="candidates must be distinct method names"):
        ValpxSelectedMaps(ColourNet(), candidates=("cam", "CAM"))


def test_auto_also_chooses_the_distinct_layer_on_valpx(data):
    """With several ``distinct_layer``, every distinct candidate is tried from each layer, and valpx chooses the
    layer too: here ``encoder.layer3`` (and the CAM on top of it) sees nothing, ``encoder.layer2`` the colours."""
    model = ColourNet().eval()
    model.encoder = nn.Sequential(OrderedDict(layer2=nn.AvgPool2d(CELL), layer3=nn.Conv2d(3, 3, 1), layer4=nn.Identity()))
    nn.init.zeros_(model.encoder.layer3.weight), nn.init.zeros_(model.encoder.layer3.bias)  # blind features
    layers = ["encoder.layer3", "encoder.layer2"]
    auto = ValpxSelectedMaps(model, candidates=("cam", "distinct"), distinct_layer=layers, k=5)
    assert auto.candidates == ["cam", "distinct@encoder.layer3", "distinct@encoder.layer2"]
    with pytest.raises(TypeError, match="several distinct layers need re-iterable training batches"):
        auto.fit(batches(data))  # a generator: the second bank would see no batch
    choice = auto.fit(list(batches(data))).select(valpx_batches(data[:4]))
    scores = auto.report["valpx_pxap"]
    assert choice == {0: "distinct@encoder.layer2", 1: "distinct@encoder.layer2"}, scores
    assert scores["0"]["distinct@encoder.layer2"] > 95 > 60 > scores["0"]["distinct@encoder.layer3"]
    x = data[4]["image"][None]
    torch.testing.assert_close(auto(x, [0]), auto.extractors["distinct@encoder.layer2"](x, [0]))
    with pytest.raises(ValueError, match="a layer or a list of different layers"):
        ValpxSelectedMaps(model, candidates=("distinct",), distinct_layer=["encoder.layer2", "encoder.layer2"])
    with pytest.raises(ValueError, match="seed maps 'distinct' take one distinct_layer; a list of layers is for 'auto'"):
        prepare_seed_maps("distinct", model, [], distinct_kwargs={"distinct_layer": layers})


def test_store_auto_records_its_choice(tmp_path, data):
    model = diffuse_class0_cam_model()
    checkpoint = tmp_path / "source.pt"
    torch.save(model.state_dict(), checkpoint)
    items = [{k: v for k, v in it.items() if k != "cell_mask"} for it in data]
    valpx = [{"image": it["image"], "mask": pixel_mask(it["cell_mask"]), "label": it["label"]} for it in data[:4]]
    kwargs = dict(distinct_kwargs={"k": 5}, candidates=("cam", "distinct"))
    with pytest.raises(ValueError, match="seed maps 'auto' are chosen on valpx; pass selection_loader"):
        build_store(tmp_path / "store", model, items, "auto", checkpoint, **kwargs)
    assert not (tmp_path / "store" / "manifest.json").exists()
    loader = torch.utils.data.DataLoader(valpx, batch_size=2)
    store = build_store(tmp_path / "store", model, items, "AUTO", checkpoint, selection_loader=loader, **kwargs)
    assert store.manifest["method"] == "auto"
    assert store.manifest["selection"]["choice"] == {"0": "distinct", "1": "cam"}


@pytest.mark.parametrize("seed_maps, layers", [("cam+distinct", None), ("auto", None),
                                               ("auto", ["encoder.layer1", "encoder.layer2"])])
def test_bundle_stores_distinct_seed_maps(trained_bundle, tiny_glas, tmp_path, seed_maps, layers):
    """``--seed_maps cam+distinct`` and ``auto`` through the bundle's own CAM writer (``auto`` chooses on the
    bundle's valpx), from its trained source model; ``auto`` with a list of ``distinct_layer`` tries each."""
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), workflow_type=None, logging_file=False,
        bundle_root=str(trained_bundle), datalist=str(tiny_glas), cam_store_dir=str(tmp_path / "cams"),
        seed_maps=seed_maps, **TINY_BUNDLE, **({"distinct_layer": layers} if layers else {}),
    )
    workflow.initialize()
    store = workflow.parser.get_parsed_content("cams#writer")()
    cams = CAMStore.open(trained_bundle / "models" / "cams")
    assert store.manifest["method"] == seed_maps
    assert store.ids == cams.ids and store.manifest["feature_size"] == cams.manifest["feature_size"]
    maps = torch.stack([store.load(i) for i in store.ids])
    assert maps.amin(dim=(1, 2, 3)).eq(0).all() and maps.le(1).all()
    if seed_maps == "cam+distinct":  # where the tiny model's CAM is constant, the distinctiveness map stands
        assert maps.amax(dim=(1, 2, 3)).eq(1).all()
    else:
        valpx_classes = {str(it["label"]) for it in json.loads(tiny_glas.read_text())["valpx"]}
        selection = store.manifest["selection"]
        assert set(selection["choice"]) == valpx_classes
        tags = [f"@{layer}" for layer in layers] if layers else [""]
        assert set(selection["valpx_pxap"]["0"]) == {"cam", *(f"{m}{t}" for m in ("distinct", "cam+distinct") for t in tags)}


@pytest.mark.parametrize("encoder", ["resnet18_slim", "resnet50", "vgg16", "vit_tiny"])
def test_bundle_distinct_layer_fits_every_encoder(encoder):
    """The default distinctiveness layer exists for every encoder the bundle offers (ResNet: layer1; the others:
    the encoder's output) and gives ``B x C x h x w`` features at the encoder's output size."""
    from monai.bundle import ConfigParser

    from monai_pixelcam.networks import build_classifier

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser["encoder"] = encoder
    layer = parser.get_parsed_content("distinct_layer")
    assert layer == ("encoder.layer1" if encoder.startswith("resnet") else None)
    if encoder in ("resnet50", "vgg16"):
        return  # large to build; resnet18_slim shares their layer names, vit_tiny the encoder-output fallback
    model = build_classifier(encoder, "cam", 2).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.encoder(x)
    features = CrossClassDistinctiveness(model, layer).features(x)
    assert features.shape[0] == 2 and features.shape[2:] == out.shape[2:]
