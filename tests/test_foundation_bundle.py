"""A user's path with a foundation-model encoder: a local Hugging Face snapshot folder (written by the test the
way a download leaves one), the bundle's training with ``configs/foundation.json`` and ``--encoder_snapshot``,
then the exported model rebuilt for inference, on the tiny synthetic data of the suite."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from monai.bundle import ConfigWorkflow  # noqa: E402
from monai.bundle.scripts import ckpt_export, verify_net_in_out  # noqa: E402

from conftest import CONFIGS, TINY_BUNDLE  # noqa: E402
from monai_pixelcam.export import read_model_meta  # noqa: E402
from monai_pixelcam.inference import PixelCAMPredictor  # noqa: E402
from test_snapshot_encoders import _write_snapshot  # noqa: E402


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """A tiny DINOv2 (hidden 32, 2 blocks, patch 8) as ``save_pretrained`` writes it, with its preprocessor."""
    return _write_snapshot(tmp_path_factory.mktemp("phikon-v2-like") / "dinov2-tiny", "dinov2")


def test_the_input_puts_the_network_at_the_pretraining_scale(tmp_path, tiny_glas, snapshot):
    """``foundation.json``: the input side is the one that puts the network at the snapshot's pretraining scale
    (``pretraining_mpp``, 0.5 µm/px), a multiple of both 14 and 16, and model_meta's mpp follows from it."""
    from monai_pixelcam.data import load_datalist
    from monai_pixelcam.export import image_size_at_mpp, network_mpp

    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "foundation.json")], logging_file=False,
        workflow_type="train", bundle_root=str(tmp_path), datalist=str(tiny_glas), encoder_snapshot=str(snapshot),
    )
    workflow.initialize()
    data = load_datalist(tiny_glas)
    size = workflow.parser.get_parsed_content("image_size")
    assert size == workflow.parser.get_parsed_content("crop_size") == image_size_at_mpp(data, 0.5, 112)
    assert size % 112 == 0 and abs(network_mpp(data, size) - 0.5) <= 0.5 * 56 / size  # within half a step
    # the tiny images are 64 px at 7.44 µm/px: 952 px at 0.5, 8.5 multiples of 112, rounded to 9
    assert data["mpp"] * 64 / 0.5 == pytest.approx(952.3, abs=0.1) and size == 1008


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # expected: the trace fixes Python-side checks
def test_bundle_trains_and_exports_with_a_frozen_snapshot_encoder(tmp_path, tiny_glas, snapshot):
    overrides = {**TINY_BUNDLE, "image_size": 56, "crop_size": 48, "trainable_blocks": 0}
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "foundation.json")],
        meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"), workflow_type="train",
        bundle_root=str(tmp_path), datalist=str(tiny_glas), encoder_snapshot=str(snapshot), **overrides,
    )
    workflow.initialize()
    network = workflow.parser.get_parsed_content("source#network_def")
    assert type(network.encoder).__name__ == "SnapshotEncoder" and network.encoder.trainable_blocks == 0
    assert workflow.parser.get_parsed_content("distinct_layer") == "encoder.blocks.1"
    frozen = dict(network.encoder.named_parameters())
    before = {k: v.detach().clone() for k, v in frozen.items()}
    workflow.run()
    workflow.finalize()

    models = tmp_path / "models"
    metrics = json.loads((models / "metrics.json").read_text())
    assert 0.0 <= metrics["pixelcam"]["bloc"]["pxap"] <= 100.0
    meta = read_model_meta(models)
    assert meta["network"]["encoder_snapshot"] == str(snapshot) and "trainable_blocks" not in meta["network"]
    # frozen: the exported encoder is the snapshot's, unchanged by both stages
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    for name, value in before.items():
        torch.testing.assert_close(state[f"encoder.{name}"], value, rtol=0, atol=0, msg=name)
    predictor = PixelCAMPredictor.from_model_dir(models, device="cpu")
    out = predictor.predict(torch.randint(0, 256, (40, 48, 3), dtype=torch.uint8).numpy())
    assert out["map"].shape == (40, 48) and float(out["map"].min()) >= 0.0 and float(out["map"].max()) <= 1.0

    # the inference config rebuilds it from model_meta.json; MONAI's checks and export as a model zoo user runs
    # them. TorchScript by trace: transformers models cannot be scripted (README, "Foundation-model encoders").
    infer, meta_file = str(CONFIGS / "inference.json"), str(CONFIGS / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=infer, model_dir=str(models))
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts), ckpt_file=str(models / "model.pt"), meta_file=meta_file,
        config_file=infer, model_dir=str(models), use_trace=True, input_shape=[1, 3, 56, 56],
    )
    net = ConfigWorkflow(config_file=infer, workflow_type="infer", model_dir=str(models)).parser.get_parsed_content(
        "network_def")
    net.load_state_dict(state)
    x = torch.rand(2, 3, 64, 48)  # another batch and size than traced
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(ts))(x), net.eval()(x))
