"""The MONAI bundle, model-zoo style: metadata schema, ConfigWorkflow for train / evaluate / inference,
network verification and TorchScript export, bad inputs through the inference bundle."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.bundle.scripts import ckpt_export, verify_net_in_out
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "pixelcam" / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
TINY = dict(
    source_epochs=2, pixelcam_epochs=2, image_size=56, crop_size=48, batch_size=8, num_workers=0, val_interval=1,
    tensorboard_images=2,
)


def _meta_schema() -> dict:
    return json.loads((ROOT / "tests" / "data" / "bundle_meta_schema.json").read_text())


def test_metadata_follows_the_bundle_specification():
    meta = json.loads(Path(META).read_text())
    jsonschema.validate(meta, _meta_schema())
    for tensors in meta["network_data_format"].values():
        for spec in tensors.values():
            assert len(spec["channel_def"]) == spec["num_channels"]
    assert "monai-pixelcam" in meta["required_packages_version"]
    assert any("2503.24135" in ref for ref in meta["references"])
    for key in ("version", "network_data_format", "references"):
        broken = {k: v for k, v in meta.items() if k != key}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, _meta_schema())


@pytest.fixture(scope="module")
def trained_bundle(tmp_path_factory, tiny_glas):
    """A bundle root trained end to end on tiny synthetic data through ConfigWorkflow."""
    root = tmp_path_factory.mktemp("bundle")
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"), meta_file=META, logging_file=LOGGING, workflow_type="train",
        bundle_root=str(root), datalist=str(tiny_glas), **TINY,
    )
    workflow.initialize()
    assert not workflow.check_properties()
    workflow.run()
    workflow.finalize()
    return root


def _tags(folder: Path) -> set[str]:
    files = glob.glob(str(folder / "events.out.tfevents.*"))
    assert len(files) == 1, f"one writer per run, got {files}"
    acc = EventAccumulator(files[0])
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])


def test_train_workflow_writes_models_metrics_logs_and_figures(trained_bundle):
    models = trained_bundle / "models"
    for name in ("model.pt", "model_meta.json", "metrics.json", "source_bloc.pt", "source_bcl.pt",
                 "pixelcam_bloc.pt", "pixelcam_bcl.pt", "figures/pr_curves.png", "figures/maps.png"):
        assert (models / name).is_file(), name
    parser = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train").parser
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # strict
    metrics = json.loads((models / "metrics.json").read_text())
    assert set(metrics["source"]) == {"cam", "gradcam", "gradcampp", "layercam"}
    for figures in [metrics["pixelcam"]["bloc"], metrics["pixelcam"]["bcl"], metrics["source"]["cam"]["bloc"]]:
        assert {"accuracy", "pxap", "pxap_benign", "pxap_malignant", "dice", "miou", "dice@0.5", "threshold"} <= set(
            figures
        )
        assert 0 <= figures["pxap"] <= 100 and 0 <= figures["threshold"] <= 1
    meta = json.loads((models / "model_meta.json").read_text())
    assert meta["threshold"] == metrics["pixelcam"]["bloc"]["threshold"]
    assert {"loss", "loss_cls", "loss_pix", "valpx_pxap", "valcl_accuracy", "valpx/maps"} <= _tags(
        models / "tb" / "pixelcam"
    )
    assert {"loss", "valpx_pxap", "valcl_accuracy"} <= _tags(models / "tb" / "source")


def test_evaluate_workflow_in_and_out_of_distribution(trained_bundle, tiny_glas, tmp_path):
    from monai_pixelcam.data.synthetic import synthesize

    ood = synthesize("camelyon", tmp_path / "camelyon", n_images=16, image_size=64, seed=1, progress=False)
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], meta_file=META,
        logging_file=LOGGING, workflow_type="eval", run_id="evaluate", bundle_root=str(trained_bundle),
        datalist=str(tiny_glas), ood_datalist=str(ood), **TINY,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    test = json.loads((trained_bundle / "eval" / "metrics.json").read_text())
    assert test["pixelcam"]["bloc"]["accuracy"] >= 0
    out = json.loads((trained_bundle / "eval" / "ood" / "metrics.json").read_text())
    assert out["classes"] == ["normal", "tumor"]
    assert "accuracy" not in out["pixelcam"]["bloc"], "labels of another dataset give no accuracy"
    assert 0 <= out["pixelcam"]["bloc"]["pxap"] <= 100 and "pxap_tumor" not in out["pixelcam"]["bloc"]
    assert (trained_bundle / "eval" / "ood" / "figures" / "maps.png").is_file()


def test_inference_workflow_on_a_folder_with_bad_files(trained_bundle, tiny_glas, tmp_path):
    from monai_pixelcam.data import load_datalist

    images = tmp_path / "in"
    images.mkdir()
    for item in load_datalist(tiny_glas)["test"][:2]:
        Image.open(item["image"]).save(images / Path(item["image"]).name)
    Image.fromarray(np.full((40, 70, 3), 200, np.uint8)).save(images / "wide.jpg")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    (images / "notes.txt").write_text("a text file")
    out = tmp_path / "out"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"), meta_file=META, logging_file=LOGGING, workflow_type="infer",
        bundle_root=str(trained_bundle), input_dir=str(images), output_dir=str(out),
    )
    workflow.initialize()
    workflow.run()
    report = workflow.parser.get_parsed_content("inference")[0]  # resolved by the run, not run again
    workflow.finalize()
    assert len(report["processed"]) == 3 and list(report["failed"]) == ["corrupt.png"]
    assert "corrupt.png" in report["failed"]["corrupt.png"], "the error names the file"
    mask = np.asarray(Image.open(out / "wide_mask.png"))
    assert mask.shape == (40, 70) and set(np.unique(mask)) <= {0, 255}
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("image,")
    assert "corrupt.png" in (out / "errors.csv").read_text() and "notes.txt" in (out / "errors.csv").read_text()


def test_verify_net_in_out_and_torchscript_export(trained_bundle):
    train = str(CONFIGS / "train.json")
    verify_net_in_out(net_id="network_def", meta_file=META, config_file=train)
    ts = trained_bundle / "models" / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(ts), ckpt_file=str(trained_bundle / "models" / "model.pt"),
        meta_file=META, config_file=train,
    )
    exported = torch.jit.load(str(ts))
    net = ConfigWorkflow(config_file=train, workflow_type="train").parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained_bundle / "models" / "model.pt", weights_only=True))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net.eval()(x))
