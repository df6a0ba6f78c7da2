"""engines/pipeline.py: storing the source model's CAMs and the evaluation report, on tiny in-memory data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from PIL import Image
from sklearn.metrics import average_precision_score

from monai_pixelcam.cams import CAMStore, StaleCAMStoreError, build_cam
from monai_pixelcam.engines import PixelCAMInferer, evaluate_pipeline, store_cams
from monai_pixelcam.networks import build_classifier, build_pixelcam

SIZE = 32
CLASSES = ["benign", "malignant"]
NET = {"encoder": "resnet18", "head": "cam", "num_classes": 2, "base_width": 8}


def make_items(n: int, seed: int) -> list[dict]:
    """``n`` images ``3 x SIZE x SIZE`` with a darker disk (the mask) on noise; labels alternate 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    items = []
    for i in range(n):
        cy, cx = (torch.rand(2, generator=g) * 0.5 + 0.25) * SIZE
        radius = float(torch.rand(1, generator=g)) * SIZE / 6 + SIZE / 8
        mask = (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).float()[None]
        image = (0.8 - 0.5 * mask + 0.2 * torch.rand(3, SIZE, SIZE, generator=g)).clamp(0, 1)
        items.append({"image": image, "mask": mask, "label": i % 2, "id": f"s{seed}-{i}"})
    return items


def loader(items: list[dict]) -> DataLoader:
    return DataLoader(items, batch_size=3, shuffle=False)


def seeded(build, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build(**NET).eval()


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """``source_{bloc,bcl}.pt`` and ``pixelcam_{bloc,bcl}.pt``: four different random networks."""
    folder = tmp_path_factory.mktemp("checkpoints")
    for k, (stage, build) in enumerate((("source", build_classifier), ("pixelcam", build_pixelcam))):
        for j, selection in enumerate(("bloc", "bcl")):
            torch.save(seeded(build, 10 * k + j).state_dict(), folder / f"{stage}_{selection}.pt")
    return folder


def pooled_maps(checkpoint, items: list[dict], method: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Maps of ``items`` and their masks, all pixels pooled (float32 scores, {0, 1} masks): PixelCAM's from a
    ``pixelcam_*`` checkpoint, or with ``method`` the source model's CAM of its predicted class."""
    images = torch.stack([it["image"] for it in items])
    net = (build_pixelcam if method is None else build_classifier)(**NET).eval()
    net.load_state_dict(torch.load(checkpoint, weights_only=True))
    if method is None:
        with torch.no_grad():
            maps = PixelCAMInferer()(images, net)["map"]
    else:
        maps = build_cam(method, net)(images, upsample=True)  # no labels: the predicted class
    return maps.numpy().ravel(), torch.stack([it["mask"] for it in items]).numpy().ravel()


def pxap(scores: np.ndarray, masks: np.ndarray) -> float:
    """scikit-learn's average precision in percent; PxAP on the 0.001 score grid is within 0.5 of it (test_metrics)."""
    return 100 * average_precision_score(masks, scores)


def brute_force_threshold(scores: np.ndarray, masks: np.ndarray) -> float:
    """The grid threshold ``k / 1000`` with the highest foreground/background mean IoU (lowest among ties)."""
    gt = masks > 0.5
    best, best_k = -1.0, 0
    for k in range(1001):
        pred = scores >= np.float32(k / 1000)
        tp, fp, fn = np.sum(pred & gt), np.sum(pred & ~gt), np.sum(~pred & gt)
        tn = gt.size - tp - fp - fn
        miou = (tp / (tp + fp + fn) + tn / (tn + fp + fn)) / 2
        if miou > best:
            best, best_k = miou, k
    return best_k / 1000


def run(checkpoint_dir, valpx, test, out, cam_methods=("cam",), **kwargs) -> dict:
    return evaluate_pipeline(
        seeded(build_classifier, 99), seeded(build_pixelcam, 99), checkpoint_dir, loader(valpx), loader(test), CLASSES,
        cam_methods=cam_methods, output_dir=out, n_figure_images=2, **kwargs,
    )


def test_evaluate_pipeline_writes_the_report_of_every_checkpoint(checkpoint_dir, tmp_path):
    valpx, test = make_items(6, seed=1), make_items(8, seed=2)
    out = tmp_path / "report"
    results = run(checkpoint_dir, valpx, test, out, cam_methods=("cam", "gradcam"))
    assert json.loads((out / "metrics.json").read_text()) == results
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["maps.png", "pr_curves.png"]
    for figure in (out / "figures").iterdir():
        with Image.open(figure) as im:
            assert im.format == "PNG"
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == sorted(  # nothing written beside the checkpoints
        f"{s}_{sel}.pt" for s in ("source", "pixelcam") for sel in ("bloc", "bcl")
    )
    assert results["split"] == "test" and results["classes"] == CLASSES
    assert set(results["source"]) == {"cam", "gradcam"}
    keys = {"accuracy", "pxap", "pxap_benign", "pxap_malignant", "dice", "miou", "dice@0.5", "miou@0.5", "threshold",
            "valpx_pxap"}
    for entry in [*results["source"].values(), results["pixelcam"]]:
        assert set(entry) == {"bloc", "bcl"}
        for figures in entry.values():
            assert set(figures) == keys
    # each selection reports its own checkpoint: PixelCAM's PxAP against scikit-learn's AP of that checkpoint's
    # test maps (the 0.001 score grid moves AP by at most 0.005, see test_metrics), and its valpx threshold
    # against a brute-force search on that checkpoint's valpx maps (one grid step: pixels within float rounding
    # of a grid value may fall on either side)
    aps = {}
    for selection in ("bloc", "bcl"):
        figures = results["pixelcam"][selection]
        aps[selection] = pxap(*pooled_maps(checkpoint_dir / f"pixelcam_{selection}.pt", test))
        assert figures["pxap"] == pytest.approx(aps[selection], abs=0.5)
        threshold = brute_force_threshold(*pooled_maps(checkpoint_dir / f"pixelcam_{selection}.pt", valpx))
        assert figures["threshold"] == pytest.approx(threshold, abs=1e-3)
    assert abs(aps["bloc"] - aps["bcl"]) > 1.0  # the two checkpoints are told apart by the check above


def test_a_class_without_test_images_is_reported_absent(checkpoint_dir, tmp_path):
    valpx, test = make_items(6, seed=1), [it for it in make_items(8, seed=2) if it["label"] == 1]
    results = run(checkpoint_dir, valpx, test, tmp_path / "report")
    for figures in results["pixelcam"].values():
        assert figures["pxap_benign"] is None and figures["pxap_malignant"] == pytest.approx(figures["pxap"])


def test_threshold_is_chosen_on_valpx_never_on_test(checkpoint_dir, tmp_path):
    valpx = make_items(6, seed=1)
    a = run(checkpoint_dir, valpx, make_items(8, seed=2), tmp_path / "a")
    b = run(checkpoint_dir, valpx, make_items(9, seed=3), tmp_path / "b")
    other_valpx = run(checkpoint_dir, make_items(6, seed=4), make_items(8, seed=2), tmp_path / "c")

    def entries(results):
        return {("pixelcam", s): f for s, f in results["pixelcam"].items()} | {
            ("cam", s): f for s, f in results["source"]["cam"].items()
        }

    ea, eb, ec = entries(a), entries(b), entries(other_valpx)
    for key in ea:
        assert ea[key]["threshold"] == eb[key]["threshold"], key  # another test set: same threshold
        assert ea[key]["valpx_pxap"] == eb[key]["valpx_pxap"], key
    assert any(ea[key]["pxap"] != eb[key]["pxap"] for key in ea)  # ... though the test figures changed
    assert any(ea[key]["threshold"] != ec[key]["threshold"] for key in ea)  # another valpx: another threshold


def test_out_of_distribution_test_set_reports_no_accuracy(checkpoint_dir, tmp_path):
    valpx = make_items(6, seed=1)
    tumour = [{**it, "label": 1} for it in make_items(4, seed=5)]
    normal = [{**it, "label": 0, "mask": torch.zeros_like(it["mask"])} for it in make_items(3, seed=6)]
    results = run(
        checkpoint_dir, valpx, tumour + normal, tmp_path / "ood", tag="camelyon", test_class_names=["normal", "tumor"],
        test_negative_classes=[0],
    )
    assert results["split"] == "camelyon" and results["classes"] == ["normal", "tumor"]
    for entry in (results["pixelcam"], results["source"]["cam"]):
        for figures in entry.values():
            assert "accuracy" not in figures and "pxap_tumor" not in figures  # one class with a region: no per-class
    # PxAP over the tumour images only (the normal images' maps are all negatives); the test labels name other
    # classes, so the CAM explains the predicted class, on test and on valpx where its threshold is chosen
    bloc = results["pixelcam"]["bloc"]
    assert bloc["pxap"] == pytest.approx(pxap(*pooled_maps(checkpoint_dir / "pixelcam_bloc.pt", tumour)), abs=0.5)
    assert bloc["threshold"] == pytest.approx(
        brute_force_threshold(*pooled_maps(checkpoint_dir / "pixelcam_bloc.pt", valpx)), abs=1e-3
    )
    cam = results["source"]["cam"]["bloc"]
    assert cam["pxap"] == pytest.approx(pxap(*pooled_maps(checkpoint_dir / "source_bloc.pt", tumour, "cam")), abs=0.5)
    assert cam["threshold"] == pytest.approx(
        brute_force_threshold(*pooled_maps(checkpoint_dir / "source_bloc.pt", valpx, "cam")), abs=1e-3
    )


def test_missing_checkpoint_fails_before_writing(checkpoint_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("source_bloc.pt", "source_bcl.pt", "pixelcam_bloc.pt"):
        (partial / name).write_bytes((checkpoint_dir / name).read_bytes())
    (partial / "metrics.json").write_text('{"from": "an earlier run"}')
    with pytest.raises(FileNotFoundError, match="pixelcam_bcl.pt"):
        run(partial, make_items(4, seed=1), make_items(4, seed=2), partial)
    assert json.loads((partial / "metrics.json").read_text()) == {"from": "an earlier run"}
    assert not (partial / "figures").exists()


def test_store_cams_uses_the_checkpoint_weights(tmp_path):
    trained = seeded(build_classifier, 3)
    torch.save(trained.state_dict(), tmp_path / "source_bloc.pt")
    network = seeded(build_classifier, 4)  # other weights: store_cams must load the checkpoint first
    items = make_items(5, seed=7)
    store = store_cams(network, tmp_path / "source_bloc.pt", loader(items), tmp_path / "cams", "gradcam")
    assert store.ids == [it["id"] for it in items] and len(store) == 5
    images = torch.stack([it["image"] for it in items])
    expected = build_cam("gradcam", trained)(images, labels=torch.tensor([it["label"] for it in items]))
    reopened = CAMStore.open(tmp_path / "cams", checkpoint_path=tmp_path / "source_bloc.pt", method="gradcam")
    for it, cam in zip(items, expected):
        torch.testing.assert_close(reopened.load(it["id"]), cam, atol=5e-4, rtol=0)  # float16 on disk
    with pytest.raises(StaleCAMStoreError):
        CAMStore.open(tmp_path / "cams", checkpoint_path=tmp_path / "source_bloc.pt", method="cam")
    # a checkpoint of another network is refused, naming the file, and no store is written
    torch.save(build_classifier(**{**NET, "num_classes": 3}).state_dict(), tmp_path / "three.pt")
    with pytest.raises(ValueError, match="three.pt"):
        store_cams(network, tmp_path / "three.pt", loader(items), tmp_path / "cams3", "cam")
    assert not (tmp_path / "cams3").exists()
