"""CAM extractors and the stored-CAM cache (monai_pixelcam.cams)."""

from __future__ import annotations

import copy
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import DataLoader, MetaTensor
from monai.visualize import GradCAM as MonaiGradCAM
from monai.visualize import GradCAMpp as MonaiGradCAMpp

from monai_pixelcam.cams import (
    CAM,
    CAM_METHODS,
    CAMStore,
    GradCAM,
    GradCAMpp,
    LayerCAM,
    LoadStoredCAMd,
    StaleCAMStoreError,
    build_cam,
    normalize_maps,
    sha256_file,
)
from monai_pixelcam.atomic import TMP_MARKER
from monai_pixelcam.networks import build_classifier, build_pixelcam
from conftest import build_store

METHODS = sorted(CAM_METHODS)
SIZE = 64


def make_model(head: str = "cam", seed: int = 0, head_weight: float | None = None) -> nn.Module:
    """A compact ResNet18 WSOL classifier (64 x 64 -> 8 x 8 feature map), in eval mode.

    ``head_weight`` sets the head's last linear weights to magnitudes in [m, 2m] with random signs, so that
    gradients at the feature map are far above the 1e-7 that monai's GradCAM++ adds to its denominator.
    """
    torch.manual_seed(seed)
    model = build_classifier(encoder="resnet18", head=head, num_classes=3, base_width=8)
    if head_weight is not None:
        linear = [m for m in model.image_head.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            w = linear.weight
            w.copy_(torch.sign(torch.randn_like(w)) * head_weight * (1 + torch.rand_like(w)))
    # non-trivial BatchNorm statistics, so eval mode matters
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, SIZE, SIZE))
    return model.eval()


@pytest.fixture(scope="module")
def cam_model():
    return make_model("cam")


@pytest.fixture(scope="module")
def mil_model():
    return make_model("deepmil", seed=1)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(123)
    return torch.rand(4, 3, SIZE, SIZE)


def feature_size(model, x):
    with torch.no_grad():
        return tuple(model.encoder(x[:1]).shape[-2:])


# ----------------------------------------------------------------------------------------------- extractors


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_range(method, cam_model, images):
    extractor = build_cam(method, cam_model)
    h, w = feature_size(cam_model, images)
    maps = extractor(images)
    assert maps.shape == (4, 1, h, w) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    flat = maps.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(4)) and torch.allclose(flat.max(1).values, torch.ones(4))
    up = extractor(images, upsample=True)
    assert up.shape == (4, 1, SIZE, SIZE) and float(up.min()) == 0.0 and float(up.max()) == 1.0
    assert extractor(images, upsample=(20, 30)).shape == (4, 1, 20, 30)


@pytest.mark.parametrize("head", ["cam", "deepmil"])
@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_one_by_one(method, head, cam_model, mil_model, images):
    model = cam_model if head == "cam" else mil_model
    extractor = build_cam(method, model)
    labels = torch.tensor([0, 2, 1, 2])
    batch = extractor(images, labels=labels)
    single = torch.cat([extractor(images[i : i + 1], class_idx=int(labels[i])) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    # default (predicted class) per sample too, and classes really change the maps
    predicted = model(images).argmax(1)
    by_pred = torch.cat([extractor(images[i : i + 1], class_idx=int(predicted[i])) for i in range(4)])
    torch.testing.assert_close(extractor(images), by_pred, atol=1e-5, rtol=1e-4)
    other = extractor(images, class_idx=(labels + 1) % 3)
    assert not torch.allclose(other, batch, atol=1e-3)


def test_class_index_resolution(cam_model, images):
    extractor = GradCAM(cam_model)
    labels = torch.tensor([1, 0, 2, 1])
    maps, logits = extractor.extract(images, labels=labels)
    torch.testing.assert_close(maps, extractor(images, class_idx=labels))
    zeros = torch.zeros(4, dtype=torch.long)
    torch.testing.assert_close(extractor(images, class_idx=[1, 0, 2, 1], labels=zeros), maps)  # class_idx wins
    torch.testing.assert_close(extractor(images, class_idx=2), extractor(images, class_idx=torch.full((4,), 2)))
    torch.testing.assert_close(extractor(images, class_idx=labels[:, None]), maps)  # B x 1 labels
    torch.testing.assert_close(logits, cam_model(images))
    with pytest.raises(ValueError, match="out of range"):
        extractor(images, class_idx=3)
    with pytest.raises(ValueError, match="one index per sample"):
        extractor(images, class_idx=[0, 1])
    with pytest.raises(ValueError, match="unknown CAM method 'scorecam'"):
        build_cam("scorecam", cam_model)
    assert isinstance(build_cam("GradCAMpp", cam_model), GradCAMpp)



@pytest.mark.parametrize("method", METHODS)
def test_source_and_pixelcam_give_the_same_maps(method, cam_model, images):
    """Both networks name their image head ``image_head``: CAM reads its class weights on either."""
    pixelcam = build_pixelcam("resnet18", "cam", 3, base_width=8).load_source(cam_model)
    labels = torch.tensor([1, 0, 2, 1])
    torch.testing.assert_close(
        build_cam(method, pixelcam)(images, class_idx=labels), build_cam(method, cam_model)(images, class_idx=labels)
    )


def test_cam_needs_an_image_head(images):
    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.encoder(x).mean((2, 3)))

    with pytest.raises(TypeError, match="image_head.class_weights"):
        CAM(NoHead())(images)
    assert isinstance(build_cam("gradcam", NoHead())(images), torch.Tensor)  # gradient methods need no head

def _monai_maps(cls, model, x, class_idx, raw=True):
    """monai.visualize maps, one sample at a time (a batch with class_idx=None mixes samples).

    raw: at feature resolution without post-processing; else monai's defaults (bilinear upsampling to the
    input, then its normaliser that maps (min, max) to (1, 0)).
    """
    kwargs = {"upsampler": lambda size: (lambda t: t), "postprocessing": lambda t: t} if raw else {}
    extractor = cls(nn_module=copy.deepcopy(model), target_layers="encoder", **kwargs)
    return torch.cat([extractor(x[i : i + 1], class_idx=int(class_idx[i])) for i in range(x.shape[0])]).detach()


MONAI_HOOK_WARNING = "ignore:Full backward hook is firing"  # monai's own hook on a module whose inputs need no grad


@pytest.mark.filterwarnings(MONAI_HOOK_WARNING)
@pytest.mark.parametrize("ours, theirs", [(GradCAM, MonaiGradCAM), (GradCAMpp, MonaiGradCAMpp)])
def test_agrees_with_monai_visualize_cam_head(ours, theirs, images):
    model = make_model("cam", seed=2, head_weight=2.0)
    class_idx = torch.tensor([0, 1, 2, 1])
    expected = normalize_maps(_monai_maps(theirs, model, images, class_idx))
    got = ours(model)(images, class_idx=class_idx)
    assert got.flatten(1).std(1).min() > 0.05  # informative maps, not all-zero
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    # monai's defaults: upsampled, then inverted min-max
    inverted = _monai_maps(theirs, model, images, class_idx, raw=False)
    got_up = ours(model)(images, class_idx=class_idx, upsample=True)
    torch.testing.assert_close(got_up, 1 - inverted.float(), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings(MONAI_HOOK_WARNING)
def test_gradcam_agrees_with_monai_visualize_deepmil(mil_model, images):
    class_idx = torch.tensor([2, 1, 0, 0])
    expected = normalize_maps(_monai_maps(MonaiGradCAM, mil_model, images, class_idx))
    torch.testing.assert_close(GradCAM(mil_model)(images, class_idx=class_idx), expected, atol=1e-4, rtol=0)


def test_gradient_methods_match_direct_autograd(mil_model, images):
    """Hook plumbing check: weights from a plain autograd computation on encoder -> head, no hooks."""
    class_idx = torch.tensor([1, 2, 0, 1])
    feats = mil_model.encoder(images).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(mil_model.image_head(feats).gather(1, class_idx[:, None]).sum(), feats)
    a = feats.detach()
    g2 = g**2
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g**3
    alpha = torch.where(denom != 0, g2 / denom.where(denom != 0, torch.ones_like(denom)), 0.0)
    reference = {
        GradCAMpp: (alpha * g.clamp(min=0)).sum((2, 3), keepdim=True) * a,
        LayerCAM: g.clamp(min=0) * a,
        CAM: mil_model.image_head.class_weights()[class_idx][:, :, None, None] * a,
    }
    for cls, raw in reference.items():
        expected = normalize_maps(F.relu(raw.sum(1, keepdim=True)).detach())
        torch.testing.assert_close(cls(mil_model)(images, class_idx=class_idx), expected, atol=1e-5, rtol=1e-4)


def test_cam_equals_gradcam_for_cam_head(cam_model, images):
    # GAP + linear: d logit_k / d A_c(i, j) = w_kc / (h w), so GradCAM = relu(CAM) / (h w)
    labels = torch.tensor([0, 1, 2, 0])
    cam = CAM(cam_model)(images, labels=labels)
    torch.testing.assert_close(cam, GradCAM(cam_model)(images, labels=labels), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_no_side_effects_on_model(method, images):
    model = make_model("cam", seed=3)
    model.train()
    model.encoder.eval()  # mixed modes must come back as they were
    modes = {name: m.training for name, m in model.named_modules()}
    extractor = build_cam(method, model)
    maps = extractor(images)
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    # no hook survives an exception raised mid-call either
    with pytest.raises(ValueError, match="out of range"):
        extractor(images, class_idx=99)
    assert all(not m._forward_hooks for m in model.modules())
    # works for frozen weights and inside a no_grad evaluation loop
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        torch.testing.assert_close(extractor(images), maps)


def test_normalize_constant_and_target_layer_errors(cam_model, images):
    maps = torch.stack([torch.full((1, 4, 4), 3.0), torch.zeros(1, 4, 4), torch.arange(16.0).reshape(1, 4, 4)])
    out = normalize_maps(maps)
    assert torch.isfinite(out).all() and out[:2].abs().sum() == 0 and out[2].max() == 1 and out[2].min() == 0
    # zero activations give a constant map: zeros, not NaN
    model = make_model("cam", seed=4)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.zero_()
    for method in METHODS:
        assert build_cam(method, model)(images).abs().sum() == 0
    # target layer given by name; a foreign module is refused
    named = GradCAM(cam_model, target_layer="encoder")
    torch.testing.assert_close(named(images), GradCAM(cam_model)(images))
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(cam_model, target_layer=nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="not a submodule"):
        GradCAM(cam_model, target_layer="nope")


# --------------------------------------------------------------------------------------------------- store


def temporaries(root):
    """Files left behind by an interrupted atomic write (``atomic_path`` names them ``.<hex>.tmp.<name>``)."""
    return [p for p in root.rglob("*") if TMP_MARKER in p.name]


def make_items(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.rand(3, SIZE, SIZE, generator=g), "label": i % 3, "id": f"img/{i} x"}  # odd chars on purpose
        for i in range(n)
    ]


@pytest.fixture()
def checkpoint(tmp_path, cam_model):
    path = tmp_path / "source.pt"
    torch.save(cam_model.state_dict(), path)
    return path


def test_store_round_trip(tmp_path, cam_model, checkpoint):
    items = make_items()
    root = tmp_path / "store"
    store = build_store(root, cam_model, items, "gradcam", checkpoint, batch_size=4)
    reopened = CAMStore.open(root, checkpoint_path=checkpoint, method="gradcam")
    manifest = json.loads((root / "manifest.json").read_text())
    h, w = feature_size(cam_model, items[0]["image"][None])
    assert manifest["checkpoint_sha256"] == sha256_file(checkpoint)
    assert manifest["method"] == "gradcam" and manifest["feature_size"] == [h, w]
    assert manifest["image_size"] == [SIZE, SIZE] and manifest["dtype"] == "float16"
    assert manifest["ids"] == [it["id"] for it in items] and manifest["class_idx"] == [0, 1, 2, 0, 1, 2]
    assert len(reopened) == 6 and items[3]["id"] in reopened
    batch = torch.stack([it["image"] for it in items])
    expected = GradCAM(cam_model)(batch, labels=torch.tensor([it["label"] for it in items]))
    for i, it in enumerate(items):
        loaded = reopened.load(it["id"])
        assert loaded.shape == (1, h, w) and loaded.dtype == torch.float32
        torch.testing.assert_close(loaded, expected[i], atol=5e-4, rtol=0)  # float16 on disk
        torch.testing.assert_close(loaded, store.load(it["id"]))
    with pytest.raises(KeyError, match=r"'missing-id'.*store"):
        reopened.load("missing-id")
    # only the manifest and one maps folder; no temporary files
    names = sorted(p.name for p in root.iterdir())
    assert len(names) == 2 and names[0] == "manifest.json" and names[1].startswith("maps-")
    assert not temporaries(root) and len(list(root.glob("maps-*/*.npy"))) == 6


def test_store_rejects_other_checkpoint_or_method(tmp_path, cam_model, checkpoint):
    root = tmp_path / "store"
    build_store(root, cam_model, DataLoader(make_items(3), batch_size=2), "cam", checkpoint)
    other = tmp_path / "other.pt"
    torch.save(make_model("cam", seed=9).state_dict(), other)
    with pytest.raises(StaleCAMStoreError) as err:
        CAMStore.open(root, checkpoint_path=other, method="cam")
    assert sha256_file(other) in str(err.value) and sha256_file(checkpoint) in str(err.value)
    with pytest.raises(StaleCAMStoreError, match="'cam' maps, not the expected 'layercam'"):
        CAMStore.open(root, checkpoint_path=checkpoint, method="layercam")
    store = CAMStore.open(root)
    store.check(checkpoint_path=checkpoint, method="cam")
    with pytest.raises(StaleCAMStoreError):
        store.check(checkpoint_path=other)
    with pytest.raises(FileNotFoundError, match="no CAM store"):
        CAMStore.open(tmp_path / "nowhere")


def test_failed_rebuild_keeps_previous_store(tmp_path, cam_model, checkpoint, monkeypatch):
    root = tmp_path / "store"
    items = make_items(4)
    build_store(root, cam_model, items, "gradcam", checkpoint, batch_size=2)
    before = (root / "manifest.json").read_text()
    first = CAMStore.open(root, checkpoint, "gradcam").load(items[1]["id"])

    class Failing(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            if i == 3:
                raise RuntimeError("disk on fire")
            return make_items(4, seed=5)[i]

    other = tmp_path / "other.pt"
    torch.save(make_model("cam", seed=7).state_dict(), other)
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_store(root, make_model("cam", seed=7), Failing(), "layercam", other, batch_size=2)
    assert (root / "manifest.json").read_text() == before
    torch.testing.assert_close(CAMStore.open(root, checkpoint, "gradcam").load(items[1]["id"]), first)
    assert len(list(root.glob("maps-*"))) == 1 and not temporaries(root)
    # a failure at the commit point itself (the manifest's rename) keeps the previous store and its maps
    # folder, and the manifest's temporary file is removed
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "manifest.json":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        build_store(root, make_model("cam", seed=7), make_items(4, seed=5), "layercam", other, batch_size=2)
    monkeypatch.undo()
    assert (root / "manifest.json").read_text() == before and not temporaries(root)
    torch.testing.assert_close(CAMStore.open(root, checkpoint, "gradcam").load(items[1]["id"]), first)
    assert len(list(root.glob("maps-*"))) == 1
    # a successful rebuild replaces the old maps folder
    build_store(root, make_model("cam", seed=7), make_items(4, seed=5), "layercam", other, batch_size=2)
    assert len(list(root.glob("maps-*"))) == 1
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(root, checkpoint, "gradcam")
    with pytest.raises(ValueError, match="duplicate id"):
        build_store(tmp_path / "dup", cam_model, make_items(2) * 2, "cam", checkpoint)
    assert not list((tmp_path / "dup").glob("maps-*"))


def test_load_stored_camd(tmp_path, cam_model, checkpoint):
    root = tmp_path / "store"
    items = make_items(2)
    build_store(root, cam_model, items, "layercam", checkpoint)
    transform = LoadStoredCAMd(keys="cam", store=CAMStore.open(root, checkpoint, "layercam"))
    item = {"image": MetaTensor(torch.rand(3, 80, 96)), "id": items[1]["id"], "label": 1}
    out = transform(item)
    assert out["cam"].shape == (1, 80, 96) and out["cam"].dtype == torch.float32
    assert 0 <= float(out["cam"].min()) and float(out["cam"].max()) <= 1 and out["image"] is item["image"]
    # same size: the stored map unchanged
    h, w = CAMStore(root).manifest["feature_size"]
    small = LoadStoredCAMd(store=root)({"image": torch.rand(3, h, w), "id": items[0]["id"]})["cam"]
    torch.testing.assert_close(small, CAMStore(root).load(items[0]["id"]))
    # picklable for DataLoader workers; the worker re-checks the manifest against the expected checkpoint
    clone = pickle.loads(pickle.dumps(transform))
    torch.testing.assert_close(clone(item)["cam"], out["cam"])
    loader = DataLoader([item], batch_size=1, num_workers=1, collate_fn=lambda b: transform(b[0]))
    torch.testing.assert_close(next(iter(loader))["cam"], out["cam"])
    other = tmp_path / "other.pt"
    torch.save(make_model("cam", seed=9).state_dict(), other)
    build_store(root, cam_model, items, "layercam", other)
    with pytest.raises(StaleCAMStoreError):
        pickle.loads(pickle.dumps(transform))(item)
    with pytest.raises(KeyError, match="'id'"):
        LoadStoredCAMd(store=root)({"image": torch.rand(3, 8, 8)})
