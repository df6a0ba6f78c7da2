"""Mixed precision (``amp``): a network's forward under autocast with float32 outputs, the same state dict;
a bundle run in bf16 on the CPU; and bf16 inference within a stated distance of float32."""

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
from monai_pixelcam.precision import with_amp


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
        workflow_type="train", bundle_root=str(tmp_path), datalist=str(tiny_glas), amp="bf16", **TINY_BUNDLE,
    )
    workflow.initialize()
    for key in ("source#network", "network"):
        assert workflow.parser.get_parsed_content(key).forward.amp_dtype == torch.bfloat16, key
    assert workflow.parser.get_parsed_content("amp_loss_scaling") is False  # GradScaler: fp16 on a GPU only
    workflow.run()
    workflow.finalize()
    metrics = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert np.isfinite(metrics["pixelcam"]["bloc"]["pxap"]) and (tmp_path / "models" / "model.pt").is_file()
