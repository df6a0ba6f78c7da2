"""Mixed precision (``amp``): a network's forward under autocast with float32 outputs, the same state dict;
a bundle run in bf16 (and channels-last) on the CPU; and bf16 inference within a stated distance of float32.
Channels-last memory format (``channels_last``): the same values in another memory layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import CONFIGS, TINY_BUNDLE
from monai_pixelcam.data import load_datalist
from monai_pixelcam.data.io import read_mask, read_rgb
from monai_pixelcam.inference import PixelCAMPredictor
from monai_pixelcam.metrics.localization import PxAPMetric
from monai_pixelcam.networks import build_pixelcam
from monai_pixelcam.precision import with_amp, with_channels_last

CL = torch.channels_last


def test_forward_runs_in_the_amp_dtype_and_returns_float32():
    net = build_pixelcam(encoder="resnet18_slim", num_classes=2, init_seed=0).eval()
    keys = list(net.state_dict())
    seen = []
    net.encoder.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        assert with_amp(net, None) is net and seen == [torch.float32]
        out = with_amp(net, "bf16")(x)
    assert seen[-1] == torch.bfloat16 and all(v.dtype == torch.float32 for v in out.values())
    assert list(net.state_dict()) == keys and with_amp(net, "bf16").forward is net.forward  # once only
    # bf16 keeps 8 bits of mantissa: logits of a random-init net move by well under 0.1
    assert (out["cls"] - plain["cls"]).abs().max() < 0.1
    with pytest.raises(ValueError, match="amp must be null, 'bf16' or 'fp16', got 'fp8'"):
        with_amp(net, "fp8")


def test_channels_last_changes_the_layout_not_the_values():
    plain = build_pixelcam(encoder="resnet18_slim", num_classes=2, init_seed=0).eval()
    net = build_pixelcam(encoder="resnet18_slim", num_classes=2, init_seed=0).eval()
    net.load_state_dict(plain.state_dict())
    assert with_channels_last(net, False) is net and not hasattr(net.forward, "channels_last")
    net = with_channels_last(net, True)
    seen = []
    net.encoder.conv1.register_forward_pre_hook(lambda m, i: seen.append(i[0].is_contiguous(memory_format=CL)))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = plain(x), net(x)
    assert seen == [True] and net.encoder.conv1.weight.is_contiguous(memory_format=CL)
    # the same products summed in another order: float32 rounding only (|logits| ~ 1, 1e-4 is 1000 ulps)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    net.load_state_dict(plain.state_dict())  # copies into the channels-last parameters
    assert net.encoder.conv1.weight.is_contiguous(memory_format=CL)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in net.state_dict().items())


def test_channels_last_inference_gives_the_same_maps(trained_bundle, tiny_glas):
    models = trained_bundle / "models"
    data = load_datalist(tiny_glas)
    images = [read_rgb(it["image"]) for it in data["test"]][:4]
    plain = PixelCAMPredictor.from_model_dir(models, device="cpu").predict(images)
    cl = PixelCAMPredictor.from_model_dir(models, device="cpu", channels_last=True)
    assert cl.network.forward.channels_last
    for p, q in zip(plain, cl.predict(images)):
        # maps in [0, 1] from the same float32 sums in another order
        assert np.abs(p["map"] - q["map"]).max() < 1e-4 and p["class_name"] == q["class_name"]


def test_bf16_inference_is_within_a_stated_distance_of_float32(trained_bundle, tiny_glas):
    """The shared bundle's model on its test images, float32 against bf16: the maps (in [0, 1]) differ by at
    most 0.05 and the PxAP by at most 2 points (measured: 0.0083 and 0.01, on 2 cores; bf16 rounds each
    product to 8 bits of mantissa, and the map is a softmax of the pixel logits, which damps it)."""
    models = trained_bundle / "models"
    fp32 = PixelCAMPredictor.from_model_dir(models, device="cpu")
    bf16 = PixelCAMPredictor.from_model_dir(models, device="cpu", amp="bf16")
    data = load_datalist(tiny_glas)
    images = [read_rgb(it["image"]) for it in data["test"]]
    masks = [torch.from_numpy(np.array(read_mask(it["mask"])))[None, None] for it in data["test"]]
    metrics, largest = [], 0.0
    for predictor in (fp32, bf16):
        maps = [torch.as_tensor(p["map"])[None, None] for p in predictor.predict(images)]
        metric = PxAPMetric()
        metric(torch.cat(maps), torch.cat(masks))
        metrics.append((100 * metric.aggregate(), maps))
    for a, b in zip(metrics[0][1], metrics[1][1]):
        largest = max(largest, float((a - b).abs().max()))
    print(f"fp32 vs bf16: largest map difference {largest:.4f}, PxAP {metrics[0][0]:.2f} vs {metrics[1][0]:.2f}")
    assert largest <= 0.05 and abs(metrics[0][0] - metrics[1][0]) <= 2.0


def test_a_bundle_run_in_bf16_on_the_cpu(tiny_glas, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"), logging_file=False,
        workflow_type="train", bundle_root=str(tmp_path), datalist=str(tiny_glas), amp="bf16", channels_last=True,
        **TINY_BUNDLE,
    )
    workflow.initialize()
    for key in ("source#network", "network"):
        network = workflow.parser.get_parsed_content(key)
        assert network.forward.amp_dtype == torch.bfloat16 and network.forward.channels_last, key
        assert network.encoder.conv1.weight.is_contiguous(memory_format=CL), key
    assert workflow.parser.get_parsed_content("amp_loss_scaling") is False  # GradScaler: fp16 on a GPU only
    workflow.run()
    workflow.finalize()
    metrics = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert np.isfinite(metrics["pixelcam"]["bloc"]["pxap"]) and (tmp_path / "models" / "model.pt").is_file()
